"""A failed run as a notebook: it loads the step's exact inputs from the store and, executed in a
real kernel, fails the same way; after a fix the run is finished reusing what succeeded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from typer.testing import CliRunner

import velocitymesh as vm
from velocitymesh.errors import UsageError
from velocitymesh.jupyter.debug import load_failed_step, write_debug_notebook
from velocitymesh.jupyter.workspace import LocalWorkspace


def failing() -> Any:
    wf = vm.Workflow("ratios", inputs={"scale": 2})

    @wf.step
    def load():
        return {"values": [4, 2, 0]}

    @wf.step
    def ratio(load, scale):
        return [scale / v for v in load["values"]]

    return wf


def test_debug_notebook_executes_and_reproduces_the_failure(ws: LocalWorkspace, tmp_path: Path) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    wf = failing()
    wf.save()
    run = wf.run(scale=8)
    assert run.status == "failed" and run.steps["ratio"].error["message"].startswith("ZeroDivisionError")

    path = write_debug_notebook(run.run_id, tmp_path)
    assert path.parent == tmp_path and path.name == f"debug-ratios-{run.run_id[:8]}-ratio.ipynb"
    nb = nbformat.read(path, as_version=4)
    sources = [c.source for c in nb.cells]
    assert "ZeroDivisionError" in sources[0]
    assert f"load_failed_step({run.run_id!r}, 'ratio', home=" in sources[1]
    assert "def ratio(load, scale):" in sources[3] and sources[4].startswith("result = ratio(**config['args'])")
    assert f"wf.resume({run.run_id!r})" in sources[5] and f"velocitymesh resume {run.run_id}" in sources[5]
    assert len(json.dumps(nb)) < 10_000  # a loader call, no data

    client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError) as info:
        client.execute()
    assert info.value.ename == "ZeroDivisionError"
    loaded = nb.cells[1].outputs[0]["data"]["text/plain"]
    assert "'scale': 8" in loaded and "[4, 2, 0]" in loaded  # the exact rendered inputs


def test_fix_in_the_notebook_and_resume(ws: LocalWorkspace, cells: Any) -> None:
    wf = failing()
    run = wf.run()
    failed = load_failed_step(run.run_id)
    assert failed.step_id == "ratio" and failed.kind == "python"
    assert failed.config["args"] == {"load": {"values": [4, 2, 0]}, "scale": 2}
    assert failed.upstream == {"load": {"values": [4, 2, 0]}} and failed.inputs == {"scale": 2}
    namespace: dict[str, Any] = {}
    exec(failed.config["code"], namespace)
    with pytest.raises(ZeroDivisionError):
        namespace["ratio"](**failed.config["args"])

    cells("""
    def ratio(load, scale):
        return [scale / v for v in load["values"] if v]
    """)
    finished = failed.resume_with(cells.ns["ratio"])
    assert finished.run_id == run.run_id and finished.status == "succeeded"
    assert finished.outputs["ratio"] == [0.5, 1.0]
    assert ws.spec("ratios")[1] == 1 and "if v]" in ws.spec("ratios")[0].step("ratio").with_["code"]


def test_other_kinds_get_the_rendered_config_and_a_call(ws: LocalWorkspace, tmp_path: Path) -> None:
    wf = vm.Workflow("query")
    wf.sql("q", "select * from nowhere")
    run = wf.run()
    assert run.status == "failed"
    failed = load_failed_step(run.run_id)
    assert failed.config == {"query": "select * from nowhere"}
    with pytest.raises(Exception, match="nowhere"):
        failed.run_step()
    assert failed.run_step({"query": "select 42 as answer"})["rows"] == [{"answer": 42}]
    nb = nbformat.read(write_debug_notebook(run.run_id, tmp_path / "q.ipynb"), as_version=4)
    assert "output = failed.run_step(config)" in nb.cells[3].source


def test_debug_command_and_runs_without_failure(ws: LocalWorkspace, tmp_path: Path) -> None:
    from velocitymesh.cli import app
    from velocitymesh.settings import get_settings

    failed_run = failing().run()
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["debug", failed_run.run_id[:10], "-o", str(tmp_path)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "debug-ratios-" in result.stdout and f"velocitymesh resume {failed_run.run_id[:10]}" in result.stdout
    assert len(list(tmp_path.glob("debug-ratios-*.ipynb"))) == 1

    ok = vm.Workflow("fine")
    ok.transform("x", 1)
    good = ok.run()
    with pytest.raises(UsageError, match="has no failed step"):
        write_debug_notebook(good.run_id, tmp_path)
    path = write_debug_notebook(good.run_id, tmp_path, step="x")  # any step can be looked at
    assert path.exists()
