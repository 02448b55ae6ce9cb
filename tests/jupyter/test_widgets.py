"""Widget state, asserted through the widget models (traitlet values): no browser."""

from __future__ import annotations

from typing import Any

import pytest

import velocitymesh as vm
from velocitymesh.jupyter import widgets
from velocitymesh.jupyter.results import STATUS_COLOURS
from velocitymesh.jupyter.workspace import LocalWorkspace


def demo() -> Any:
    wf = vm.Workflow("live")

    @wf.step
    def numbers():
        print("counting")
        return [1, 2, 3]

    wf.llm("tell", prompt="three numbers: {{ steps.numbers.output }}", model="fake:echo")

    @wf.step
    def broken(numbers):
        raise ValueError("no good")

    return wf


def test_events_drive_the_run_widget() -> None:
    w = widgets.RunWidget(demo().spec)
    assert set(w.step_views) == {"numbers", "tell", "broken"}
    assert "pending" in w.step_views["numbers"].status.value
    w.started("run-123456789")
    w.handle({"type": "run", "status": "running", "run_id": "run-123456789"})
    assert "running" in w.header.value and "run-12345678" in w.header.value
    w.handle({"type": "step", "step": "numbers", "status": "running"})
    assert "running" in w.step_views["numbers"].status.value
    assert STATUS_COLOURS["running"] in w.dag.value
    w.handle({"type": "log", "step": "numbers", "level": "info", "message": "counting"})
    assert w.step_views["numbers"].logs.value == "info: counting\n"
    assert w.step_views["numbers"].logs.layout.display is None  # shown once there is a line
    w.handle({"type": "step", "step": "numbers", "status": "succeeded", "output": [1, 2, 3], "duration_ms": 12.0})
    assert "succeeded" in w.step_views["numbers"].status.value and "12 ms" in w.step_views["numbers"].status.value
    assert "[" in w.step_views["numbers"].output.value
    for piece in ("three ", "numbers"):
        w.handle({"type": "token", "step": "tell", "text": piece})
    assert w.step_views["tell"].stream.value == "three numbers"
    w.handle({"type": "step", "step": "tell", "status": "succeeded", "output": {"text": "x"}, "cost_usd": 0.25})
    assert w.cost.value == "cost: $0.2500"
    w.handle({"type": "step", "step": "broken", "status": "failed",
              "error": {"type": "StepError", "message": "ValueError: no good"}})
    assert "ValueError: no good" in w.step_views["broken"].output.value
    assert w.statuses == {"numbers": "succeeded", "tell": "succeeded", "broken": "failed"}
    assert STATUS_COLOURS["failed"] in w.dag.value
    w.handle({"type": "step", "step": "unknown", "status": "running"})  # ignored, no error


def test_a_real_run_updates_the_widget_live(ws: LocalWorkspace, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []
    seen_statuses: list[str] = []
    monkeypatch.setattr(widgets, "_display", shown.append)
    original = widgets.RunWidget.handle

    def spy(self: widgets.RunWidget, event: dict[str, Any]) -> None:
        original(self, event)
        if event.get("type") == "step" and event.get("step") == "numbers":
            seen_statuses.append(self.step_views["numbers"].state)

    monkeypatch.setattr(widgets.RunWidget, "handle", spy)
    run = ws.run(demo(), show=True)
    assert run.status == "failed"
    (w,) = shown
    assert isinstance(w, widgets.RunWidget) and w.run_id == run.run_id
    assert seen_statuses[:2] == ["running", "succeeded"]  # it changed while the run went
    assert w.step_views["numbers"].logs.value.startswith("info: counting")
    assert "three numbers" in w.step_views["tell"].stream.value  # streamed tokens of the fake model
    assert "failed" in w.step_views["broken"].status.value and "no good" in w.step_views["broken"].output.value
    assert "failed" in w.header.value and w.total_cost == pytest.approx(run.cost) and run.cost > 0


def test_generate_widget_shows_the_spec_and_accepts_it(ws: LocalWorkspace) -> None:
    g = vm.generate_widget(offline=True, variable=None)
    accepted: list[Any] = []
    g.on_accept(accepted.append)
    assert g.generate() is None and "write what the workflow should do" in g.message.value
    g.request.value = "every weekday at 9 fetch https://example.com/data.json and summarise it"
    wf = g.generate()
    assert wf is not None and g.accept_button.disabled is False
    assert "kind: http" in g.yaml.value and "kind: llm" in g.yaml.value and "<svg" in g.dag.value
    assert "weekdays" in g.message.value
    assert g.workflow is None
    g.accept_button.click()
    assert g.workflow is wf and accepted == [wf] and g.accept_button.disabled is True
    assert "accepted" in g.message.value


def test_generate_widget_puts_the_workflow_in_the_notebook(ws: LocalWorkspace) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    g = vm.generate_widget(offline=True)  # variable "wf" by default
    g.request.value = "fetch https://example.com/a.json"
    g.generate_button.click()
    g.accept()
    assert shell.user_ns["wf"] is g.workflow
    del shell.user_ns["wf"]
