"""The notebooks in notebooks/ run top to bottom with nbval, as a reader would run them.

One nbval run (a pytest subprocess) executes every notebook in a copy of notebooks/, with
the embedded defaults on a fresh ``VM_HOME`` and no Prefect server. Model calls go to local
servers speaking the real OpenAI and Anthropic protocols (``tests/agents/wire_servers.py``),
through ``OPENAI_BASE_URL``/``ANTHROPIC_BASE_URL`` and dummy keys, so the notebooks
themselves contain no fakes. The servers answer like a model would for what the notebooks
ask: a JSON answer matching the schema a request sends, a ``sql_query`` tool call over the
``sales`` table when that tool is offered, then a text answer quoting the tool's result.

The notebooks are stored without outputs or execution counts, so nbval (``--nbval-lax``)
only checks that every cell runs without an error; the cells assert what matters
(``run.raise_for_status()``). Clear the outputs before committing a notebook
(JupyterLab: Edit → Clear Outputs of All Cells; or ``jupyter nbconvert --clear-output``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).parent / "agents"))  # the wire servers live with the agents tests
from wire_servers import AnthropicServer, OpenAIServer, Reply

pytestmark = [pytest.mark.notebooks, pytest.mark.timeout(660)]  # one nbval run of every notebook

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
TUTORIALS = sorted(p.name for p in NOTEBOOKS_DIR.glob("[0-9][0-9]-*.ipynb"))
NOTEBOOKS = [*TUTORIALS, "examples/report.ipynb"]
SALES_QUERY = "select region, sum(amount) as total from sales group by region order by total desc"
TEST_KEY = "test-key"
NBVAL_TIMEOUT = 600


# --------------------------------------------------------------------------- the test model


def example(schema: Any, defs: dict[str, Any] | None = None) -> Any:
    """A value that satisfies a (simple) JSON schema: what a model's structured answer looks like."""
    if not isinstance(schema, dict):
        return None
    defs = {**(defs or {}), **schema.get("$defs", {}), **schema.get("definitions", {})}
    if "$ref" in schema:
        return example(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example(schema[key][0], defs)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {name: example(sub, defs) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [example(schema.get("items", {}), defs)]
    return {"string": "example", "integer": 1, "number": 1.0, "boolean": True}.get(str(kind))


def _tool_results(messages: list[dict[str, Any]]) -> list[str]:
    found = []
    for m in messages:
        if m.get("role") == "tool":  # OpenAI
            found.append(str(m.get("content")))
        elif isinstance(m.get("content"), list):  # Anthropic: tool_result blocks in a user message
            found += [json.dumps(b.get("content")) for b in m["content"]
                      if isinstance(b, dict) and b.get("type") == "tool_result"]
    return found


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
            return str(content)
    return ""


def answer(body: dict[str, Any]) -> Reply:
    """What the local test model answers to one request (either protocol)."""
    messages = body.get("messages") or []
    tools = {t.get("name") or (t.get("function") or {}).get("name"): t for t in body.get("tools") or []}
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":  # OpenAI structured output
        return Reply(text=None, json=example(response_format["json_schema"]["schema"]))
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool" and choice.get("name") in tools:  # Anthropic structured output
        return Reply(text=None, json=example(tools[choice["name"]].get("input_schema")))
    results = _tool_results(messages)
    if "sql_query" in tools and not results:
        return Reply(text=None, tool_calls=[{"name": "sql_query", "arguments": {"query": SALES_QUERY}}])
    if results:
        return Reply(text=f"According to the sales table: {results[-1][:300]}")
    words = " ".join(_last_user_text(messages).split()[:12])
    return Reply(text=f"(an answer from the local test model to: {words} …)")


# --------------------------------------------------------------------------- running nbval


def _kernel_env(home: Path, openai: OpenAIServer, anthropic: AnthropicServer) -> dict[str, str]:
    # tests/conftest.py blocks model calls in this process; the notebooks get the local servers
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VM_", "PREFECT_", "OPENAI_", "ANTHROPIC_", "PYTEST_"))}
    env.update({
        "VM_HOME": str(home / ".velocitymesh"),
        "OPENAI_BASE_URL": openai.url, "OPENAI_API_KEY": TEST_KEY,
        "ANTHROPIC_BASE_URL": anthropic.url, "ANTHROPIC_API_KEY": TEST_KEY,
        "PREFECT_HOME": str(home / ".prefect"),
        # kernel connection files and IPython's history stay in the test's folder
        "JUPYTER_RUNTIME_DIR": str(home / ".jupyter-runtime"), "IPYTHONDIR": str(home / ".ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    })
    return env


def _cases(junit: Path) -> dict[str, list[tuple[str, str | None]]]:
    """notebook → [(cell item, failure text or None)] from nbval's JUnit report."""
    by_notebook: dict[str, list[tuple[str, str | None]]] = {name: [] for name in NOTEBOOKS}
    for case in ET.parse(junit).getroot().iter("testcase"):
        where = f"{case.get('classname', '')}::{case.get('name', '')}"
        notebook = next((n for n in NOTEBOOKS if n.replace("/", ".").removesuffix(".ipynb") in where
                         or n in where), None)
        problem = next((c for c in case if c.tag in ("failure", "error")), None)
        text = None if problem is None else (problem.get("message", "") + "\n" + (problem.text or ""))[-3000:]
        if notebook is not None:
            by_notebook[notebook].append((case.get("name", ""), text))
    return by_notebook


def ensure_python3_kernel() -> None:
    """The ``python3`` kernelspec (the notebook step's default) must start this interpreter.

    ipykernel's wheel installs it into the venv (``share/jupyter/kernels``); a venv made
    without data files gets it installed here, with ``--sys-prefix`` (never user-wide).
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                       check=True, capture_output=True)


@pytest.fixture(scope="module")
def nbval_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], str]]:
    ensure_python3_kernel()
    home = tmp_path_factory.mktemp("notebooks")
    workdir = home / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, workdir, ignore=shutil.ignore_patterns(".ipynb_checkpoints", ".velocitymesh"))
    openai, anthropic = OpenAIServer(), AnthropicServer()
    openai.start()
    anthropic.start()
    try:
        for server in (openai, anthropic):
            server.script(*[answer] * 500)  # each request takes one; the function answers it
        junit = home / "nbval.xml"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=300",
             "-p", "no:cacheprovider", "-q", "-o", "asyncio_default_fixture_loop_scope=function",
             f"--junitxml={junit}", *NOTEBOOKS],
            cwd=workdir, env=_kernel_env(home, openai, anthropic), capture_output=True, text=True,
            timeout=NBVAL_TIMEOUT,
        )
        log = (done.stdout + done.stderr)[-6000:]
        assert junit.is_file(), f"nbval did not run (exit {done.returncode}):\n{log}"
        yield _cases(junit), log
    finally:
        openai.stop()
        anthropic.stop()


def test_notebooks_are_stored_without_outputs() -> None:
    """Outputs and execution counts are cleared (nbval --nbval-lax trips on half-stored ones)."""
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", name
        for number, cell in enumerate(nb.cells, start=1):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: cell {number} has outputs"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(nbval_results: tuple[dict[str, Any], str], notebook: str) -> None:
    cases, log = nbval_results
    ran = cases[notebook]
    assert ran, f"nbval ran no cell of {notebook}:\n{log}"
    failed = [f"{name}:\n{text}" for name, text in ran if text is not None]
    assert not failed, f"{notebook}: {len(failed)} of {len(ran)} cells failed\n\n" + "\n\n".join(failed)
