"""A remote workspace against the real server (create_app on a tmp VM_HOME, served by uvicorn on a
thread), with an API token made through the store: the same calls as the local workspace."""

from __future__ import annotations

from typing import Any

import pytest

import velocitymesh as vm
from velocitymesh.errors import ConfigurationError, NotFoundError
from velocitymesh.jupyter import widgets
from velocitymesh.jupyter.remote import RemoteWorkspace


def test_same_interface_as_the_local_workspace(server: tuple[str, str]) -> None:
    url, token = server
    ws = vm.workspace(url, token)
    assert isinstance(ws, RemoteWorkspace) and ws.name == "default"
    wf = vm.Workflow("remote-demo", inputs={"n": 2}, workspace=ws)

    @wf.step
    def double(n):
        return n * 2

    @wf.step
    def invert(double):
        return 1 / (double - 10)

    run = wf.run(n=5)  # saved first (the server runs saved workflows), then run there
    assert run.status == "failed" and run.outputs == {"double": 10}
    assert "ZeroDivisionError" in run.steps["invert"].error["message"]
    assert [(w.name, w.latest_version) for w in ws.workflows()] == [("remote-demo", 1)]

    loaded = ws.load("remote-demo")
    assert loaded.spec == wf.spec and loaded.saved_version == 1

    @loaded.step(id="invert")
    def fixed(double):
        return 1 / double

    done = loaded.resume(run.run_id)  # saves v2 on the server and finishes the run there
    assert done.run_id == run.run_id and done.status == "succeeded" and done.outputs["invert"] == 0.1
    assert ws.spec("remote-demo")[1] == 2
    assert ws.get_run(run.run_id).status == "succeeded"
    assert [r.run_id for r in ws.runs("remote-demo")] == [run.run_id]

    ws.secrets.set("REMOTE_KEY", "value")
    assert ws.secrets.names() == ["REMOTE_KEY"]
    ws.secrets.delete("REMOTE_KEY")
    assert ws.secrets.names() == []
    with pytest.raises(NotFoundError):
        ws.load("no-such-workflow")


def test_live_view_of_a_remote_run(server: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []
    monkeypatch.setattr(widgets, "_display", shown.append)
    ws = vm.workspace(*server)
    wf = vm.Workflow("remote-live", workspace=ws)

    @wf.step
    def talk():
        print("hello from the server")
        return "ok"

    run = ws.run(wf, show=True)
    assert run.status == "succeeded" and run.output == "ok"
    (w,) = shown
    assert "succeeded" in w.step_views["talk"].status.value and "ok" in w.step_views["talk"].output.value
    assert "hello from the server" in w.step_views["talk"].logs.value and "succeeded" in w.header.value


def test_bad_token_and_unreachable_server(server: tuple[str, str]) -> None:
    url, _ = server
    with pytest.raises(ConfigurationError, match="refused the request \\(401\\)"):
        vm.workspace(url, "vm_wrong")
    with pytest.raises(ConfigurationError, match="cannot reach"):
        vm.workspace("http://127.0.0.1:9", "vm_x")
    with pytest.raises(ConfigurationError, match="API token is needed"):
        vm.workspace(url)
