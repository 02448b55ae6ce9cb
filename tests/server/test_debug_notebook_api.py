"""Downloads of a run through the real app: the failed step as a debugging notebook (which, executed,
fails the same way) and the files steps kept (artifacts), with auth, workspace scoping, the browser's
session cookie, the links of the run page, and no way out of a step's own artifacts folder."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from fastapi import FastAPI
from server_helpers import Team

from velocitymesh.flows import sandbox
from velocitymesh.server.auth import COOKIE_NAME, make_session_cookie
from velocitymesh.server.dashboard.run import debug_html, outputs_html
from velocitymesh.server.dashboard.runstate import RunState
from velocitymesh.workspace import store

RATIOS = """
name: ratios
inputs:
  scale: {type: integer, default: 2}
steps:
  - id: load
    kind: python
    with:
      code: |
        def main():
            return {"values": [4, 2, 0]}
  - id: ratio
    kind: python
    needs: [load]
    with:
      code: |
        def main(load, scale):
            return [scale / v for v in load["values"]]
      args: {load: "{{ steps.load.output }}", scale: "{{ inputs.scale }}"}
"""

FINE = "name: fine\nsteps:\n  - {id: greet, kind: transform, with: {value: hi}}\n"

REPORTS = """
name: reports
steps:
  - id: report
    kind: notebook
    with: {path: report.ipynb, parameters: {n: 6}}
  - id: other
    kind: notebook
    with: {path: other.ipynb}
"""


async def start(client: httpx.AsyncClient, team: Team, text: str,
                inputs: dict[str, int] | None = None) -> dict[str, Any]:
    r = await client.post("/api/v1/workflows", json={"yaml": text}, headers=team.auth("editor"))
    assert r.status_code == 201, r.text
    name = re.search(r"name: (\S+)", text).group(1)  # type: ignore[union-attr]
    r = await client.post("/api/v1/runs", json={"workflow": name, "inputs": inputs or {}, "wait": 120},
                          headers=team.auth("editor"))
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def viewer_cookie(app: FastAPI) -> dict[str, str]:
    """The browser's way in: the viewer's session cookie, as /login sets it."""
    services = app.state.services
    with services.session() as s:
        viewer = store.get_user(s, "viewer")
    return {"Cookie": f"{COOKIE_NAME}={make_session_cookie(services, viewer.id, viewer.username)}"}


def run_state(app: FastAPI, run_id: str) -> RunState:
    with app.state.services.session() as s:
        return RunState.from_run(store.get_run(s, run_id))


def href(html: str, text: str) -> str:
    found = re.search(r'<a [^>]*href="([^"]+)"[^>]*>' + re.escape(text) + "</a>", html)
    assert found, html
    return found.group(1).replace("&amp;", "&")


@pytest.mark.notebooks
async def test_debug_notebook_downloads_and_reproduces_the_failure(
    sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient, sqlite_team: Team, tmp_path: Path,
) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    c = sqlite_client
    run = await start(c, sqlite_team, RATIOS, {"scale": 8})
    assert run["status"] == "failed", run
    # the run page offers it (to anyone who can read the run) as a link to the API ...
    link = href(debug_html(run_state(sqlite_app, run["id"])), "Debug as notebook")
    assert link == f"/api/v1/runs/{run['id']}/debug-notebook"
    # ... which the browser follows with its session cookie
    r = await c.get(link, headers=viewer_cookie(sqlite_app))
    assert r.status_code == 200, r.text
    name = f"debug-ratios-{run['id'][:8]}-ratio.ipynb"
    assert r.headers["content-disposition"] == f'attachment; filename="{name}"'
    assert r.headers["content-type"].startswith("application/x-ipynb+json")
    assert (await c.get(link, headers=sqlite_team.auth("viewer"))).content == r.content  # and a token

    nb = nbformat.reads(r.text, as_version=4)
    nbformat.validate(nb)
    home = str(sqlite_app.state.services.settings.home.resolve())
    assert f"load_failed_step({run['id']!r}, 'ratio', home={home!r})" in nb.cells[1].source
    assert "def main(load, scale):" in nb.cells[3].source

    client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError) as info:
        await asyncio.to_thread(client.execute)
    assert info.value.ename == "ZeroDivisionError"
    loaded = nb.cells[1].outputs[0]["data"]["text/plain"]
    assert "'scale': 8" in loaded and "[4, 2, 0]" in loaded  # the exact rendered inputs, from the store


async def test_debug_notebook_answers(app: FastAPI, client: httpx.AsyncClient, team: Team) -> None:
    c = client
    failed = await start(c, team, RATIOS)
    fine = await start(c, team, FINE)
    assert (failed["status"], fine["status"]) == ("failed", "succeeded")
    url = f"/api/v1/runs/{failed['id']}/debug-notebook"

    for role in ("viewer", "editor", "owner"):
        assert (await c.get(url, headers=team.auth(role))).status_code == 200, role
    assert (await c.get(url)).status_code == 401
    assert (await c.get(url, headers=team.auth("stranger"))).status_code == 404  # another workspace's run
    assert (await c.get(f"/api/v1/runs/{'f' * 32}/debug-notebook", headers=team.auth("viewer"))).status_code == 404

    r = await c.get(f"/api/v1/runs/{fine['id']}/debug-notebook", headers=team.auth("viewer"))
    assert r.status_code == 409
    assert "has no failed step" in r.json()["detail"] and "?step=" in r.json()["hint"]
    assert debug_html(run_state(app, fine["id"])) == ""  # and the run page offers none
    # any step can still be opened by name; an unknown one is 404
    r = await c.get(f"/api/v1/runs/{fine['id']}/debug-notebook", params={"step": "greet"},
                    headers=team.auth("viewer"))
    assert r.status_code == 200 and nbformat.reads(r.text, as_version=4).metadata["velocitymesh"]["step"] == "greet"
    r = await c.get(url, params={"step": "nope"}, headers=team.auth("viewer"))
    assert r.status_code == 404 and "no step 'nope'" in r.json()["detail"]
    r = await c.get(url, params={"step": "load"}, headers=team.auth("viewer"))
    assert r.status_code == 200 and "def main():" in r.text
    # on Postgres the notebook names no folder: the environment it is opened in names the database
    settings = app.state.services.settings
    assert ("home=" in (await c.get(url, headers=team.auth("viewer"))).text) == (settings.database_url is None)


@pytest.fixture(scope="module", autouse=True)
def _stop_sandboxes() -> Iterator[None]:
    yield
    asyncio.run(sandbox.shutdown_sandboxes())


@pytest.mark.notebooks
async def test_artifacts_are_listed_and_downloaded_and_nothing_else(
    sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient, sqlite_team: Team,
) -> None:
    c, team = sqlite_client, sqlite_team
    settings = sqlite_app.state.services.settings
    for name, code in (("report", "import velocitymesh.jupyter.outputs as vmo\nvmo.output('square', n * n)"),
                       ("other", "print('other')")):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        params = nbformat.v4.new_code_cell("n = 0")
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(code)]
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, settings.data_dir / f"{name}.ipynb")
    run = await start(c, team, REPORTS)
    assert run["status"] == "succeeded", run
    rid = run["id"]
    steps = {s["step_id"]: s for s in run["steps"]}
    assert steps["report"]["artifacts"] == ["report.ipynb"] and steps["other"]["artifacts"] == ["other.ipynb"]
    assert steps["report"]["output"]["outputs"] == {"square": 36}

    # the run page lists them as download links, which work with the browser's cookie
    link = href(outputs_html(run_state(sqlite_app, rid)), "report.ipynb")
    assert link == f"/api/v1/runs/{rid}/steps/report/artifacts/report.ipynb"
    r = await c.get(link, headers=viewer_cookie(sqlite_app))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ipynb+json")
    assert r.headers["content-disposition"] == 'attachment; filename="report.ipynb"'
    assert r.headers["x-content-type-options"] == "nosniff"
    executed = nbformat.reads(r.text, as_version=4)
    assert any("injected-parameters" in cell.metadata.get("tags", []) for cell in executed.cells)
    assert r.content == (settings.artifacts_dir / rid / "report" / "report.ipynb").read_bytes()
    # a remote workspace's Run gives the same API paths, fetched with its token
    from velocitymesh.jupyter.results import Run

    remote = Run.of((await c.get(f"/api/v1/runs/{rid}", headers=team.auth("viewer"))).json())
    assert remote.artifacts == {"report": [link], "other": [f"/api/v1/runs/{rid}/steps/other/artifacts/other.ipynb"]}
    assert (await c.get(link)).status_code == 401
    assert (await c.get(link, headers=team.auth("stranger"))).status_code == 404

    # a file in the folder that no record lists, a folder of files, escapes, another step's file
    folder = settings.artifacts_dir / rid / "report"
    (folder / "unlisted.txt").write_text("not recorded")
    key = settings.key_file.resolve()
    secret = key.read_text().strip()
    assert secret
    base = f"/api/v1/runs/{rid}/steps"
    for path in (f"{base}/report/artifacts/unlisted.txt", f"{base}/report/artifacts/other.ipynb",
                 f"{base}/other/artifacts/report.ipynb", f"{base}/nope/artifacts/report.ipynb",
                 f"{base}/report/artifacts/..%2F..%2F..%2F{key.name}",
                 f"{base}/report/artifacts/%2E%2E/other/other.ipynb",
                 f"{base}/report/artifacts/..%2Fother%2Fother.ipynb", f"{base}/report/artifacts/%2Fetc%2Fpasswd",
                 f"{base}/report/artifacts/{'%2F'.join(['..'] * 8)}%2Fetc%2Fpasswd",
                 f"{base}/report/artifacts/{key}", f"{base}/report/artifacts/report.ipynb%00"):
        r = await c.get(httpx.URL(path), headers=team.auth("owner"))
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert secret not in r.text
    assert (await c.get(f"{base}/other/artifacts/other.ipynb", headers=team.auth("viewer"))).status_code == 200
    # a recorded file swapped for a link out of the folder is not followed
    (folder / "report.ipynb").unlink()
    (folder / "report.ipynb").symlink_to(key)
    assert (await c.get(link, headers=team.auth("owner"))).status_code == 404
