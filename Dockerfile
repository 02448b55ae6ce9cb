# VelocityMesh: one image for every Fly.io process group (web, worker, prefect).
#
#   docker build -t velocitymesh .
#   docker run -p 8080:8080 -e VM_SECRET_KEY=$(velocitymesh secrets keygen) velocitymesh
#
# Two stages: the builder compiles/installs into /opt/venv; the runtime image gets that venv
# only (no compiler, no pip cache). The dependencies are installed from pyproject.toml and the
# pins in constraints.txt before the source is copied, so editing code rebuilds one small layer.
# Checked against the CLI and fly.toml by tests/test_deploy_files.py.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------- builder
FROM python:${PYTHON_VERSION}-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Wheels exist for every pinned dependency on amd64/arm64; the compiler is for the odd sdist.
# Debian package versions are not pinned: the slim image's stable release fixes them (hadolint DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies in their own layer: only pyproject.toml and the pins invalidate it.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt

# The package itself (README.md is its long description).
COPY README.md ./
COPY velocitymesh ./velocitymesh
RUN pip install -c constraints.txt . \
 && velocitymesh --help > /dev/null

# ---------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim AS runtime

# bubblewrap: the namespace sandbox of python steps (VM_ENV=production refuses to run them without it).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 velocitymesh \
 && useradd --system --uid 10001 --gid velocitymesh --create-home --home-dir /home/velocitymesh \
      --shell /usr/sbin/nologin velocitymesh \
 && mkdir -p /data \
 && chown velocitymesh:velocitymesh /data

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VM_HOME=/data \
    PORT=8080

# Numeric, so a runtime that checks "non-root" without reading /etc/passwd can tell.
USER 10001:10001
WORKDIR /home/velocitymesh

EXPOSE 8080

# No curl in the slim image: the standard library asks /healthz (process alive).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=4)"]

# One uvicorn worker per machine (Bokeh sessions live in the process that made them);
# scale with machines: fly scale count web=N.
CMD ["velocitymesh", "serve"]
