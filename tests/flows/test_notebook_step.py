"""The notebook step kind: papermill end to end through the engine, errors, timeouts, isolation."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from pydantic import ValidationError

from velocitymesh.errors import BlockedError, NotFoundError, StepCancelled, UsageError
from velocitymesh.flows import sandbox
from velocitymesh.flows.engine import Engine
from velocitymesh.flows.steps import get_kind
from velocitymesh.flows.steps import notebook as nbstep
from velocitymesh.flows.steps.base import StepContext, StepLogger
from velocitymesh.jupyter.outputs import output
from velocitymesh.settings import Settings
from velocitymesh.workspace import store
from velocitymesh.workspace.spec import Workflow

pytestmark = pytest.mark.notebooks


def write_notebook(path: Path, *cells: str, parameters: str | None = None) -> Path:
    """A notebook of code cells; ``parameters`` becomes the first cell, tagged `parameters`."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell("# A test notebook"))
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(c) for c in cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def workflow(timeout: float | None = None, **with_: Any) -> Workflow:
    step: dict[str, Any] = {"id": "report", "kind": "notebook", "with": with_}
    if timeout is not None:
        step["timeout"] = timeout
    return Workflow.model_validate({"name": "nb-test", "inputs": {"region": {"type": "string", "default": "EU"}},
                                    "steps": [step]})


def processes_with(marker: str) -> list[str]:
    """Command lines of the live (non-zombie) processes whose command line contains ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.fixture(scope="module", autouse=True)
def _stop_sandboxes() -> Iterator[None]:
    yield
    asyncio.run(sandbox.shutdown_sandboxes())


@pytest.fixture
def engine(settings: Settings) -> Engine:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Engine(settings)


def test_registered_and_config() -> None:
    kind = get_kind("notebook")
    assert kind.run is nbstep.run and kind.config is nbstep.Config
    assert "path" in kind.config.model_json_schema()["properties"]  # the offline planner reads this
    with pytest.raises(ValidationError, match=r"must end in \.ipynb"):
        nbstep.Config(path="report.py")
    with pytest.raises(ValidationError, match="Python variable names"):
        nbstep.Config(path="r.ipynb", parameters={"not a name": 1})
    assert nbstep.check({"path": "r.txt", "parameters": {"class": 1}, "kernel": "bad kernel"}) == [
        ("path", "'r.txt' is not a notebook", "give the path of an .ipynb file"),
        ("parameters.class", "'class' is not a Python variable name",
         "name parameters like the variables of the notebook's parameters cell"),
        ("kernel", "'bad kernel' is not a kernel name", "see `jupyter kernelspec list`"),
    ]
    assert nbstep.check({"path": "{{ inputs.nb }}", "parameters": {"n": "{{ inputs.n }}"}}) == []


async def test_runs_through_the_engine(engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # what the engine's process holds must not reach the kernel
    monkeypatch.setenv("OPENAI_API_KEY", "sk-engine-only")
    monkeypatch.setenv("VM_SECRET_KEY", "engine-only-key")
    engine.secrets.set("api_token", "tok-very-secret-123")
    (settings.data_dir / "reports").mkdir(parents=True)
    (settings.data_dir / "reports" / "sales.csv").write_text("region,amount\nEU,10\nUS,5\nEU,7\n")
    write_notebook(
        settings.data_dir / "reports" / "weekly.ipynb",
        "import csv, os\nimport velocitymesh.jupyter.outputs as vmo\n"
        "rows = [r for r in csv.DictReader(open('sales.csv')) if r['region'] == region]\n"
        "print(f'{len(rows)} rows for {region}')",
        "total = vmo.output('total', sum(int(r['amount']) for r in rows) * factor)\n"
        "vmo.output('region', region)\nvmo.output('env', sorted(os.environ))\n"
        f"vmo.output('key_file_visible', os.path.exists({str(settings.key_file.resolve())!r}))\n"
        "vmo.output('token_seen', token)\nimport sys\nvmo.output('python', sys.executable)",
        parameters="region = 'US'\nfactor = 1\ntoken = ''",
    )
    spec = workflow(path="reports/weekly.ipynb",
                    parameters={"region": "{{ inputs.region }}", "factor": 2, "token": "{{ secrets.api_token }}"})
    result = await engine.run(spec)
    assert result.status == "succeeded", result.error
    out = result.steps["report"].output
    recorded = out["outputs"]
    assert recorded["total"] == 34 and recorded["region"] == "EU"
    env = set(recorded["env"])
    assert not env & {"OPENAI_API_KEY", "VM_SECRET_KEY", "ANTHROPIC_BASE_URL"}, env
    assert not any(name.startswith("VM_") for name in env)
    if sandbox.isolation_mode(settings) == "bwrap":
        assert recorded["key_file_visible"] is False  # VM_HOME is hidden, its data folder excepted
    # the artefact: kept under the run, executed, with the secret masked (also in the recorded output)
    artifact = Path(out["notebook"])
    assert artifact == (settings.artifacts_dir / result.run_id / "report" / "report.ipynb").resolve()
    text = artifact.read_text()
    assert "tok-very-secret-123" not in text and "***" in text
    executed = nbformat.reads(text, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert recorded["token_seen"] == "***"  # the engine redacts recorded outputs too
    assert recorded["python"] == sys.executable  # the python3 kernel runs this interpreter
    # what the cells printed became the step's log
    with store.session_scope(engine.sf) as s:
        logs = [line["message"] for line in store.get_run(s, result.run_id).steps["report"].logs]
    assert "2 rows for EU" in logs


async def test_failing_cell(engine: Engine, settings: Settings) -> None:
    write_notebook(settings.data_dir / "broken.ipynb",
                   "x = 1", "def explode(n):\n    return {}['missing-' + str(n)]\n\nexplode(x)",
                   parameters="x = 0")
    result = await engine.run(workflow(path="broken.ipynb", parameters={"x": 7}))
    assert result.status == "failed"
    error = result.steps["report"].error
    assert error is not None and error["type"] == "StepError"
    # cell 4 of the notebook as saved: markdown, parameters, "x = 1", the failing one
    assert error["message"].startswith("cell 4 (In [4]) of broken.ipynb raised KeyError: 'missing-1'")
    assert "explode(n)" in error["message"] and "Traceback" not in error["message"][:40]
    artifact = settings.artifacts_dir / result.run_id / "report" / "report.ipynb"
    assert str(artifact.resolve()) in error["hint"]
    executed = nbformat.read(artifact, as_version=4)
    assert any(o.get("ename") == "KeyError" for c in executed.cells for o in c.get("outputs", []))


async def test_timeout_kills_the_kernel(engine: Engine, settings: Settings) -> None:
    marker = f"{4000 + uuid.uuid4().int % 1000}.25"
    write_notebook(settings.data_dir / "slow.ipynb",
                   f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'])\ntime.sleep(600)")
    started = time.monotonic()
    result = await engine.run(workflow(path="slow.ipynb", timeout=6))
    assert time.monotonic() - started < 30
    assert result.status == "failed"
    assert result.steps["report"].error["type"] == "StepTimeout"  # type: ignore[index]
    await asyncio.sleep(0.2)
    assert processes_with(f"sleep {marker}") == []
    assert processes_with(f"vm-notebook-{result.run_id[:16]}") == []


@pytest.mark.parametrize("isolation", ["auto", "process"])
async def test_cancel_kills_everything(settings: Settings, isolation: str) -> None:
    settings = settings.model_copy(update={"python_isolation": isolation})
    settings.data_dir.mkdir(parents=True)
    marker = f"{5000 + uuid.uuid4().int % 1000}.75"
    write_notebook(settings.data_dir / "hang.ipynb",
                   f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'])\ntime.sleep(600)")
    run_id = f"cancel{uuid.uuid4().hex[:10]}"
    ctx = StepContext(run_id=run_id, step_id="hang", workflow="wf", settings=settings, logger=StepLogger(),
                      timeout=120)
    task = asyncio.create_task(nbstep.run(nbstep.Config(path="hang.ipynb"), ctx))
    deadline = time.monotonic() + 60
    while not processes_with(f"sleep {marker}"):
        assert not task.done(), task
        assert time.monotonic() < deadline, "the notebook never reached its cell"
        await asyncio.sleep(0.1)
    assert processes_with(f"vm-notebook-{run_id}")  # the child and the kernel
    ctx.cancel.set()
    with pytest.raises(StepCancelled):
        await asyncio.wait_for(task, 15)
    await asyncio.sleep(0.2)
    assert processes_with(f"sleep {marker}") == []
    assert processes_with(f"vm-notebook-{run_id}") == []
    assert (settings.artifacts_dir / run_id / "hang" / "hang.ipynb").is_file()  # kept as far as it ran


async def test_bad_paths_and_missing_parameters_cell(settings: Settings, tmp_path: Path) -> None:
    settings.data_dir.mkdir(parents=True)
    ctx = StepContext(run_id="r1", step_id="nb", workflow="wf", settings=settings, logger=StepLogger())
    outside = write_notebook(tmp_path / "elsewhere.ipynb", "1")
    with pytest.raises(BlockedError, match="outside the workspace data folder"):
        await nbstep.run(nbstep.Config(path=str(outside)), ctx)
    with pytest.raises(BlockedError, match="outside"):
        await nbstep.run(nbstep.Config(path="../elsewhere.ipynb"), ctx)
    (settings.data_dir / "link.ipynb").symlink_to(outside)
    with pytest.raises(BlockedError, match="outside"):
        await nbstep.run(nbstep.Config(path="link.ipynb"), ctx)
    with pytest.raises(NotFoundError, match="does not exist") as missing:
        await nbstep.run(nbstep.Config(path="nope.ipynb"), ctx)
    assert str(settings.data_dir.resolve()) in str(missing.value.hint)
    write_notebook(settings.data_dir / "plain.ipynb", "print(1)")
    with pytest.raises(UsageError, match="no cell tagged `parameters`") as untagged:
        await nbstep.run(nbstep.Config(path="plain.ipynb", parameters={"n": 1}), ctx)
    assert "property inspector" in str(untagged.value.hint)
    (settings.data_dir / "junk.ipynb").write_text("{not json")
    with pytest.raises(UsageError, match="not valid notebook JSON"):
        await nbstep.run(nbstep.Config(path="junk.ipynb"), ctx)


def test_output_outside_a_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    value = {"n": (1, 2), "ok": True}
    assert output("summary", value) is value
    assert capsys.readouterr().out == 'summary = {"n": [1, 2], "ok": true}\n'
    with pytest.raises(TypeError, match=r"vm.output\('bad', …\): the value\['x'\] is a set"):
        output("bad", {"x": {1}})
    with pytest.raises(ValueError, match="non-empty string key"):
        output("", 1)


def test_collect_outputs_last_value_wins() -> None:
    mime = nbstep.OUTPUT_MIME
    document = {"cells": [
        {"cell_type": "code", "outputs": [{"output_type": "display_data", "data": {mime: {"key": "a", "value": 1}}}]},
        {"cell_type": "markdown"},
        {"cell_type": "code", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "hi"},
            {"output_type": "display_data", "data": {mime: json.dumps({"key": "a", "value": [2]})}},
            {"output_type": "display_data", "data": {mime: {"value": "no key"}}},
        ]},
    ]}
    assert nbstep.collect_outputs(document) == {"a": [2]}
