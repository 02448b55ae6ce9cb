# VelocityMesh — the two commands a newcomer needs: `make run` and `make test`.
# Only python3 (>= 3.11) and make are assumed; everything else is installed here.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install run test quick lint sysdeps bench clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "VelocityMesh needs Python 3.11 or newer (found %s); set PYTHON=python3.11" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

# The main job on the embedded defaults: SQLite + in-process bus + DuckDB under ./.velocitymesh —
# the dashboard and API on http://127.0.0.1:8080 (a demo workspace and the admin login on first start)
run: install
	$(BIN)/velocitymesh up

# OS packages the tests use: bubblewrap (python-step sandbox) and Chromium (the dashboard's
# browser tests, driven by Playwright; its own browser download does not work everywhere).
# Installed when we can (root + apt); otherwise the tests that need them say why they skip.
sysdeps:
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap"; apt-get install -y -q bubblewrap >/dev/null || \
	      (apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null); \
	  else echo "note: bubblewrap (bwrap) is not installed; python steps will use process isolation"; fi; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium"; apt-get install -y -q chromium >/dev/null || \
	      (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null); \
	  else echo "note: chromium is not installed; the dashboard's browser tests will skip"; fi; \
	fi

lint: install
	$(BIN)/ruff check velocitymesh tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install sysdeps lint
	$(BIN)/pytest -q -p no:cacheprovider

# The quick local loop: everything but the slow groups.
quick: install
	$(BIN)/pytest -q -x -m "not prefect and not browser and not notebooks"

bench: install
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .velocitymesh .pytest_cache .mypy_cache .ruff_cache
