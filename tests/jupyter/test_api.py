"""The notebook API end to end, in-process: build with the decorator and the builders, run, save,
load, edit, resume after a fix, deploy, generate."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from typing import Any

import pytest
from conftest import Cells

import velocitymesh as vm
from velocitymesh.errors import SpecError, UsageError
from velocitymesh.jupyter.workspace import LocalWorkspace
from velocitymesh.workspace import store

BUILD = [
    """
    import math
    SCALE = 10

    def scaled(x):
        return math.floor(x * SCALE)
    """,
    """
    wf = vm.Workflow("numbers", description="adds numbers", inputs={"count": 3})

    @wf.step
    def numbers(count):
        return list(range(1, count + 1))
    """,
    """
    @wf.step(retries=1, timeout=30)
    def total(numbers):
        '''Sum, scaled by a notebook helper.'''
        return sum(scaled(n) for n in numbers)

    wf.llm("say", prompt="The total is {{ steps.total.output }}", model="fake:echo")
    wf
    """,
]


def build(cells: Cells) -> Any:
    """The workflow defined in notebook cells, as a person would."""
    for code in BUILD:
        wf = cells(code)
    return wf


def test_decorated_steps_become_python_steps_with_their_source(cells: Cells) -> None:
    wf = build(cells)
    spec = wf.spec
    assert [s.id for s in spec.steps] == ["numbers", "total", "say"]
    total = spec.step("total")
    assert total.kind == "python" and total.needs == ["numbers"] and total.retries.count == 1 and total.timeout == 30
    assert total.description == "Sum, scaled by a notebook helper."
    code = total.with_["code"]
    # the helper, its module and its constant travel with the step; the decorator does not
    assert "import math" in code and "SCALE = 10" in code and "def scaled(x" in code and "@wf.step" not in code
    assert total.with_["function"] == "total" and total.with_["args"] == {"numbers": "{{ steps.numbers.output }}"}
    assert spec.step("numbers").with_["args"] == {"count": "{{ inputs.count }}"}
    assert spec.step("say").needs == ["total"]  # from the template
    assert vm.load_workflow_text(wf.to_yaml()) == spec
    assert wf.validate() == []


def test_run_save_load_edit_and_resume(ws: LocalWorkspace, cells: Cells) -> None:
    wf = build(cells)
    run = wf.run(count=4)
    assert run.status == "succeeded", run.error
    assert run.outputs["numbers"] == [1, 2, 3, 4] and run.outputs["total"] == 100
    assert run.outputs["say"]["text"] == "The total is 100"
    assert run.cost > 0 and run.steps["say"].cost == run.cost
    assert set(run.steps) == {"numbers", "total", "say"} and run.run_id

    v1 = wf.save(message="first")
    assert v1.number == 1 and wf.saved_version == 1
    with store.session_scope(ws.sf) as s:  # what the dashboard reads, at once
        assert [w.name for w in store.list_workflows(s, ws.id)] == ["numbers"]
        assert store.get_version(s, ws.id, "numbers").message == "first"
    assert wf.save().number == 1  # unchanged: no new version

    loaded = vm.load("numbers")
    assert loaded.spec == wf.spec and loaded.saved_version == 1
    assert "def scaled" in loaded["total"].with_["code"]

    @loaded.step
    def halve(total):
        return total / 0  # a bug

    v2 = loaded.save(message="halve")
    assert v2.number == 2 and loaded.saved_version == 2
    failed = loaded.run()
    assert failed.status == "failed" and failed.steps["halve"].status == "failed"
    assert "ZeroDivisionError" in failed.steps["halve"].error["message"]
    assert failed.outputs["total"] == 60

    @loaded.step(id="halve")
    def fixed(total):
        return total / 2

    resumed = loaded.resume(failed.run_id)  # saves the fix as v3 and finishes the run
    assert resumed.run_id == failed.run_id and resumed.status == "succeeded"
    assert resumed.outputs["halve"] == 30  # the fixed code ran
    assert ws.spec("numbers")[1] == 3 and ws.spec("numbers")[0] == loaded.spec
    assert [r.run_id for r in loaded.runs()][:2] == [failed.run_id, run.run_id]
    assert [w.latest_version for w in ws.workflows()] == [3]


def test_runs_inside_a_running_event_loop(ws: LocalWorkspace) -> None:
    """A Jupyter cell runs inside the kernel's event loop: wf.run() must work there too."""
    wf = vm.Workflow("in-loop")

    @wf.step
    def one():
        return 1

    async def cell() -> Any:
        return wf.run()

    assert asyncio.run(cell()).output == 1


def test_builders_and_template_checks() -> None:
    wf = vm.Workflow("kinds", inputs=["topic"])
    wf.http("download", url="https://example.com/{{ inputs.topic }}.json", headers={"Accept": "application/json"},
            retries=2)
    wf.sql("top", "select * from download limit 3", needs=["download"])
    wf.transform("shape", "{{ steps.top.output.rows }}")
    wf.agent("research", task="Look into {{ inputs.topic }}", tools=["http_get"], model="fake:echo", max_turns=3)

    class Answer:  # a pydantic-like model class is turned into its JSON schema
        @staticmethod
        def model_json_schema() -> dict[str, Any]:
            return {"type": "object", "properties": {"ok": {"type": "boolean"}}}

    wf.llm("judge", prompt="{{ steps.shape.output }} {{ steps.research.output }}", schema=Answer, model="fake:echo")
    spec = wf.spec
    download = spec.step("download")
    assert download.retries.count == 2 and download.with_["headers"] == {"Accept": "application/json"}
    assert spec.step("shape").needs == ["top"] and spec.step("judge").needs == ["shape", "research"]
    assert spec.step("judge").with_["schema"]["properties"]["ok"] == {"type": "boolean"}
    assert spec.step("research").with_["max_turns"] == 3
    with pytest.raises(UsageError, match=r"reads steps\.nope.*steps so far: download, top, shape, research, judge"):
        wf.transform("bad", "{{ steps.nope.output }}")
    with pytest.raises(UsageError, match=r"inputs\.missing"):
        wf.transform("bad", "{{ inputs.missing }}")
    with pytest.raises(UsageError, match="needs ghost"):
        wf.transform("bad", 1, needs=["ghost"])
    with pytest.raises(UsageError, match="unknown step option"):
        wf.add("bad", "transform", {"value": 1}, retry=3)
    with pytest.raises(UsageError, match="need itself"):
        wf.transform("download", "{{ steps.judge.output }}")  # redefining download to need judge: a cycle
    assert wf.step_ids == ["download", "top", "shape", "research", "judge"]
    with pytest.raises(UsageError, match="steps top need 'download'"):
        wf.remove("download")
    wf.remove("judge")
    assert "judge" not in wf


def test_redefining_a_step_replaces_it_in_place() -> None:
    wf = vm.Workflow("redo")

    @wf.step
    def a():
        return 1

    @wf.step
    def b(a):
        return a + 1

    @wf.step(id="a")
    def a_again():
        return 2

    assert wf.step_ids == ["a", "b"] and wf["a"].with_["function"] == "a_again"


def test_invalid_workflow_reports_every_problem() -> None:
    wf = vm.Workflow("broken", cron="not a cron")
    wf.add("x", "no-such-kind")
    problems = wf.validate()
    paths = {p.path for p in problems}
    assert "trigger.schedule.cron" in paths and "steps[0].kind" in paths
    with pytest.raises(SpecError):
        _ = wf.spec
    with pytest.raises(UsageError, match="not a workflow name"):
        vm.Workflow("Not A Slug")


def test_display_shows_the_dag(cells: Cells) -> None:
    bundle = build(cells)._repr_mimebundle_()
    assert "<svg" in bundle["text/html"] and "numbers" in bundle["text/html"] and "total" in bundle["text/html"]
    assert bundle["text/plain"].startswith("<Workflow numbers")


def test_deploy_sets_the_schedule_saves_and_deploys(ws: LocalWorkspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from velocitymesh import flows

    calls: list[dict[str, Any]] = []

    async def fake_deploy(settings: Any, workflow: str, **kw: Any) -> str:
        calls.append({"workflow": workflow, **kw})
        return "deployed"

    # a stand-in for flows.prefect_deploy: importing the real one imports prefect (seconds)
    fake = types.ModuleType("velocitymesh.flows.prefect_deploy")
    fake.deploy = fake_deploy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "velocitymesh.flows.prefect_deploy", fake)
    monkeypatch.setattr(flows, "prefect_deploy", fake, raising=False)
    # and no Prefect server: deploy() chooses the API first (tests/flows/test_notebook_deploy.py does it for real)
    chosen: list[Any] = []
    monkeypatch.setattr("velocitymesh.flows.prefect_server.ensure_prefect_api", lambda s: chosen.append(s))
    wf = vm.Workflow("nightly")
    wf.transform("x", 1)
    with pytest.raises(UsageError, match="no schedule"):
        wf.deploy()
    assert wf.deploy(cron="0 3 * * *", timezone="Europe/Paris") == "deployed"
    saved, _ = ws.spec("nightly")
    assert saved.trigger.schedule is not None and saved.trigger.schedule.cron == "0 3 * * *"
    assert calls == [{"workflow": "nightly", "workspace": "default", "version": None, "inputs": {}}]
    assert chosen == [ws.settings]


def test_generate_gives_a_builder(ws: LocalWorkspace) -> None:
    wf = vm.generate("fetch https://example.com/data.json and summarise it", offline=True)
    assert isinstance(wf, vm.Workflow) and [s.kind for s in wf.spec.steps] == ["http", "llm"]
    assert wf.generated.source == "offline"
    with pytest.raises(SpecError):
        vm.generate("", offline=True)


def test_secrets_and_workspace_listing(ws: LocalWorkspace) -> None:
    ws.secrets.set("API_KEY", "s3cret")
    assert ws.secrets.names() == ["API_KEY"]
    wf = vm.Workflow("uses-secret")
    wf.transform("k", "{{ secrets.API_KEY }}")
    run = ws.run(wf)
    assert run.status == "succeeded" and json.dumps(run.outputs).count("s3cret") == 0  # redacted in records
    ws.secrets.delete("API_KEY")
    assert ws.secrets.names() == []
    assert ws.runs(limit=1)[0].run_id == run.run_id
