"""Files steps keep (``StepResult.artifacts``): recorded on the step record relative to the
artifacts folder, listed in the step's bus event and by the notebook API, and read back only
when recorded and still inside the step's own folder."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from velocitymesh.flows import sandbox
from velocitymesh.flows.engine import Engine
from velocitymesh.flows.recorder import artifact_file, artifact_names, artifact_record
from velocitymesh.settings import Settings
from velocitymesh.workspace import store
from velocitymesh.workspace.spec import Workflow

RUN = "run0123456789"


def write_notebook(path: Path, *cells: str, parameters: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, *(nbformat.v4.new_code_cell(c) for c in cells)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


# --- recording and reading back (no kernel) ---------------------------------------------------


def test_record_keeps_only_files_of_the_steps_own_folder(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    own = root / RUN / "report"
    (own / "charts").mkdir(parents=True)
    (own / "report.ipynb").write_text("{}")
    (own / "charts" / "a.png").write_bytes(b"png")
    (root / RUN / "other").mkdir()
    (root / RUN / "other" / "other.ipynb").write_text("{}")
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    (own / "escape.txt").symlink_to(outside)

    recorded = artifact_record(root, RUN, "report", [
        own / "report.ipynb", str(own / "charts" / "a.png"), own / "report.ipynb",  # a repeat is listed once
        root / RUN / "other" / "other.ipynb",  # another step's file
        outside, own / "escape.txt",  # outside, directly or through a link
        own / "missing.ipynb", own / "charts",  # not a file
        own / ".." / "other" / "other.ipynb",
    ])
    assert recorded == [f"{RUN}/report/report.ipynb", f"{RUN}/report/charts/a.png"]
    assert artifact_names(RUN, "report", {"artifacts": recorded}) == ["report.ipynb", "charts/a.png"]


def test_names_and_files_come_from_the_record_only(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    own = root / RUN / "report"
    own.mkdir(parents=True)
    (own / "report.ipynb").write_text("{}")
    (own / "unlisted.txt").write_text("here, but not recorded")
    details = {"artifacts": [f"{RUN}/report/report.ipynb", f"{RUN}/other/x.txt", f"{RUN}/report/../other/x.txt",
                             "elsewhere/report/report.ipynb", 42, None], "reason": "kept"}
    assert artifact_names(RUN, "report", details) == ["report.ipynb"]
    assert artifact_names(RUN, "report", {}) == artifact_names(RUN, "report", None) == []
    assert artifact_names(RUN, "report", {"artifacts": "report.ipynb"}) == []

    assert artifact_file(root, RUN, "report", details, "report.ipynb") == (own / "report.ipynb").resolve()
    for name in ("unlisted.txt", "../other/x.txt", "x.txt", str(own / "report.ipynb"), "", "report.ipynb\0"):
        assert artifact_file(root, RUN, "report", details, name) is None, name
    assert artifact_file(root, RUN, "other", details, "report.ipynb") is None  # another step's name

    # a recorded file swapped for a link out of the folder, or deleted, is not served
    target = tmp_path / "key"
    target.write_text("secret key")
    (own / "report.ipynb").unlink()
    assert artifact_file(root, RUN, "report", details, "report.ipynb") is None
    (own / "report.ipynb").symlink_to(target)
    assert artifact_file(root, RUN, "report", details, "report.ipynb") is None


# --- through the engine: the notebook step ------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _stop_sandboxes() -> Iterator[None]:
    yield
    asyncio.run(sandbox.shutdown_sandboxes())


@pytest.mark.notebooks
async def test_notebook_steps_record_their_executed_notebooks(settings: Settings) -> None:
    from velocitymesh.jupyter.workspace import LocalWorkspace, forget_local_workspaces

    data = settings.data_dir
    write_notebook(data / "square.ipynb", "import velocitymesh.jupyter.outputs as vmo\nvmo.output('square', n * n)",
                   parameters="n = 0")
    write_notebook(data / "broken.ipynb", "raise ValueError(f'bad {n}')", parameters="n = 0")
    spec = Workflow.model_validate({"name": "kept", "steps": [
        {"id": "squares", "kind": "notebook", "map": {"over": "{{ [2, 3] }}", "as": "item"},
         "with": {"path": "square.ipynb", "parameters": {"n": "{{ item }}"}}},
        {"id": "broken", "kind": "notebook", "on_error": "continue", "with": {"path": "broken.ipynb",
                                                                            "parameters": {"n": 7}}},
        {"id": "plain", "kind": "transform", "with": {"value": 1}},
    ]})
    engine = Engine(settings)
    events: list[dict[str, Any]] = []
    engine.listeners.append(events.append)
    result = await engine.run(spec)
    await engine.aclose()
    assert result.steps["squares"].status == "succeeded", result.steps["squares"].error
    assert [o["outputs"]["square"] for o in result.steps["squares"].output] == [4, 9]
    assert result.steps["broken"].status == "failed"

    with store.session_scope(engine.sf) as s:
        run = store.get_run(s, result.run_id)
    rid = result.run_id
    # mapped items in item order; a failed notebook keeps its executed copy, error in place
    assert run.steps["squares"].details["artifacts"] == [f"{rid}/squares/squares.0.ipynb",
                                                         f"{rid}/squares/squares.1.ipynb"]
    assert run.steps["broken"].details["artifacts"] == [f"{rid}/broken/broken.ipynb"]
    assert "artifacts" not in run.steps["plain"].details
    for rel in [*run.steps["squares"].details["artifacts"], *run.steps["broken"].details["artifacts"]]:
        assert not os.path.isabs(rel) and (settings.artifacts_dir / rel).is_file()
    broken = artifact_file(settings.artifacts_dir, rid, "broken", run.steps["broken"].details, "broken.ipynb")
    assert broken is not None
    executed = nbformat.read(broken, as_version=4)
    assert any(o.get("ename") == "ValueError" for c in executed.cells for o in c.get("outputs", []))

    # the live view learns the names from the step's event
    finished = {e["step"]: e for e in events if e.get("type") == "step" and e.get("status") != "running"}
    assert finished["squares"]["artifacts"] == ["squares.0.ipynb", "squares.1.ipynb"]
    assert finished["broken"]["artifacts"] == ["broken.ipynb"]
    assert "artifacts" not in finished["plain"]

    # the notebook API: paths of files that exist
    ws = LocalWorkspace(settings)
    try:
        got = ws.get_run(rid)
        assert got.steps["squares"].artifacts == [str(settings.artifacts_dir / rid / "squares" / f"squares.{i}.ipynb")
                                                  for i in (0, 1)]
        assert got.artifacts == {"squares": got.steps["squares"].artifacts, "broken": got.steps["broken"].artifacts}
        assert all(Path(p).is_file() for paths in got.artifacts.values() for p in paths)
        assert got.steps["plain"].artifacts == []
    finally:
        ws.close()
        forget_local_workspaces()
