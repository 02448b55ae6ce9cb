"""The dashboard without a browser: the data logic of its pages and components (graph
layout, YAML paths, run state from bus events, charts, forms, diffs), the live follower
against the real engine and bus, and the mounted pages over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from velocitymesh.server.auth import AuthUser
from velocitymesh.server.dashboard import PAGES, charts, dag, yamlpaths
from velocitymesh.server.dashboard.editor import check_draft, problems_html, state_html
from velocitymesh.server.dashboard.history import diff_html
from velocitymesh.server.dashboard.runform import input_widget, read_inputs
from velocitymesh.server.dashboard.runstate import LOGS, RUN, STEPS, STREAM, RunState, format_cost, format_duration
from velocitymesh.server.dashboard.session import PageContext, can_write, user_from_payload, user_payload
from velocitymesh.server.dashboard.workflows import WorkflowRow, ago, filter_rows
from velocitymesh.server.services import Services
from velocitymesh.settings import Settings
from velocitymesh.workspace import store
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.spec import InputSpec
from velocitymesh.workspace.yamlio import load_workflow_text

CHAIN = """\
name: chain
inputs:
  who: {type: string, default: world}
steps:
  - id: a
    kind: transform
    with: {value: "hello {{ inputs.who }}"}
  - id: b
    kind: transform
    needs: [a]
    with: {value: "{{ steps.a.output }}!"}
  - id: c
    kind: transform
    needs: [a]
    with: {value: 2}
"""


def _run(status: str, workflow: str = "w", *, days_ago: int = 0, cost: float = 0.0) -> store.Run:
    created = datetime.now(UTC) - timedelta(days=days_ago)
    return store.Run(id=f"r{status}{days_ago}{workflow}", workspace="ws", workflow=workflow, version=1, spec={},
                     content_hash="h", inputs={}, status=status, engine="local", cost_usd=cost, created_at=created)


# --- the graph -------------------------------------------------------------------------------


def test_graph_reads_half_written_documents() -> None:
    data = {"steps": [{"id": "a", "kind": "http"}, "junk", {"kind": "no id"}, {"id": "a", "kind": "dup"},
                      {"id": "b", "kind": "llm", "needs": "a", "when": "x", "retries": 2},
                      {"id": "c", "needs": ["b", "ghost"], "on_error": "a"}]}
    nodes = dag.nodes_from_data(data)
    assert [n.id for n in nodes] == ["a", "b", "c"]
    assert nodes[1].needs == ("a",) and nodes[1].marks == ("when", "retry")
    assert nodes[2].kind == "?" and nodes[2].on_error == "a"
    assert dag.nodes_from_data(None) == [] and dag.nodes_from_data({"steps": "x"}) == []


def test_graph_layers_by_longest_path_and_survives_cycles() -> None:
    nodes = dag.nodes_from_data({"steps": [
        {"id": "a", "kind": "t"}, {"id": "b", "kind": "t", "needs": ["a"]}, {"id": "c", "kind": "t", "needs": ["a"]},
        {"id": "d", "kind": "t", "needs": ["b", "c", "a"]},
    ]})
    lay = dag.layout(nodes)
    assert {k: v[0] for k, v in lay.nodes.items()} == {"a": 0, "b": 1, "c": 1, "d": 2}
    assert lay.rows == 2 and lay.columns == 3
    cyclic = dag.nodes_from_data({"steps": [{"id": "x", "kind": "t", "needs": ["y"]},
                                            {"id": "y", "kind": "t", "needs": ["x"]}]})
    assert set(dag.layout(cyclic).nodes) == {"x", "y"}
    assert "<svg" in dag.render_svg(cyclic)


def test_graph_svg_colours_statuses_and_escapes_text() -> None:
    nodes = dag.nodes_from_data({"steps": [{"id": "<b>x</b>", "kind": "<script>"}, {"id": "y", "kind": "t"}]})
    svg = dag.render_svg(nodes, {"y": "failed"})
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'data-step="y" data-status="failed"' in svg and "#dc2626" in svg
    assert "No steps yet" in dag.render_svg([])


# --- problems → lines ------------------------------------------------------------------------


def test_problem_paths_find_their_lines() -> None:
    text = CHAIN
    assert yamlpaths.split_path('steps[2].with["a b"].c') == ["steps", 2, "with", "a b", "c"]
    assert yamlpaths.line_of(text, "steps[1].needs[0]") == 9
    assert yamlpaths.line_of(text, "steps[2].with.value") == 14
    assert yamlpaths.line_of(text, "steps[9].kind") == 3  # as deep as the document goes
    assert yamlpaths.line_of("a: [", "a") is None
    assert yamlpaths.line_of_problem("a: [\n", "", "invalid YAML at line 2, column 1: …") == 1
    marks = yamlpaths.ace_annotations(text, [Problem("steps[0].kind", "bad", "fix it"),
                                             Problem("inputs.who", "unused", severity="warning")])
    assert marks[0] == {"row": 5, "column": 0, "text": "steps[0].kind: bad (fix it)", "type": "error"}
    assert marks[1]["type"] == "warning" and marks[1]["row"] == 2


# --- the editor's check ------------------------------------------------------------------------


def test_draft_check_reports_problems_and_keeps_the_data_for_the_graph() -> None:
    good = check_draft(CHAIN)
    assert good.valid and good.spec is not None and good.spec.name == "chain" and not good.errors
    bad = check_draft(CHAIN.replace("kind: transform\n    needs: [a]\n    with: {value: 2}", "kind: nope"))
    assert not bad.valid and [p.path for p in bad.errors] == ["steps[2].kind"]
    assert isinstance(bad.data, dict) and len(bad.data["steps"]) == 3
    broken = check_draft("name: [")
    assert broken.data is None and broken.errors
    html = problems_html([Problem("steps[0].with", "<oops>", "use <this>")])
    assert "&lt;oops&gt;" in html and "steps[0].with" in html and "<oops>" not in html
    assert "unsaved changes" in state_html(good, dirty=True)
    assert "✗ 1 problem" in state_html(bad, dirty=True)


# --- run state from the bus --------------------------------------------------------------------


def test_run_state_follows_events() -> None:
    spec = load_workflow_text(CHAIN)
    run = store.Run(id="r1", workspace="ws", workflow="chain", version=2, spec=spec.to_data(), content_hash="h",
                    inputs={}, status="queued", engine="local")
    state = RunState.from_run(run)
    assert state.statuses() == {"a": "pending", "b": "pending", "c": "pending"}
    assert state.apply({"type": "run", "status": "running", "t": 1_700_000_000}) == {RUN}
    assert state.started_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert state.apply({"type": "step", "step": "a", "status": "running"}) == {STEPS, RUN}
    assert state.apply({"type": "log", "step": "a", "level": "info", "message": "hi"}) == {LOGS}
    assert state.apply({"type": "token", "step": "b", "text": "Hel"}) == {STREAM}
    state.apply({"type": "token", "step": "b", "text": "lo"})
    state.apply({"type": "step", "step": "a", "status": "succeeded", "output": "x", "duration_ms": 12.0,
                 "cost_usd": 0.25})
    state.apply({"type": "step", "step": "b[0]", "status": "failed", "error": {"message": "boom"}})
    state.apply({"type": "run", "status": "failed", "cost_usd": 0.5, "error": {"message": "b failed"},
                 "t": 1_700_000_003})
    assert state.steps["a"].status == "succeeded" and state.steps["a"].output == "x"
    assert state.steps["b[0]"].kind == "transform"  # a mapped child has its parent's kind
    assert state.stream == {"b": "Hello"} and state.logs[0].message == "hi"
    assert state.finished and state.cost_usd == 0.5 and state.error == {"message": "b failed"}
    assert state.finished_at == datetime.fromtimestamp(1_700_000_003, UTC)
    assert state.apply({"type": "step"}) == set() and state.apply({"type": "whatever", "step": "a"}) == set()
    assert state.counts() == {"succeeded": 1, "pending": 2, "failed": 1}


def test_run_state_caps_logs_and_formats() -> None:
    state = RunState(run_id="r", workflow="w")
    for i in range(1000):
        state.apply({"type": "log", "step": "s", "message": str(i)})
    assert len(state.logs) == 400 and state.logs[-1].message == "999"
    assert format_duration(None) == "" and format_duration(5) == "5 ms" and format_duration(2500) == "2.5 s"
    assert format_duration(125_000) == "2 min 5 s"
    assert format_cost(0) == "$0" and format_cost(0.001234) == "$0.0012" and format_cost(1.5) == "$1.50"


# --- overview numbers ----------------------------------------------------------------------------


def test_runs_per_day_and_cost_per_workflow() -> None:
    runs = [_run("succeeded"), _run("failed", days_ago=1), _run("crashed", days_ago=1), _run("running"),
            _run("succeeded", "x", days_ago=30, cost=3.0), _run("succeeded", "y", cost=0.5)]
    daily = charts.runs_per_day(runs, days=3, today=datetime.now(UTC).date())
    assert daily.counts == {"succeeded": [0, 0, 2], "failed": [0, 2, 0], "other": [0, 0, 1]}
    assert daily.total == 5 and daily.days[-1] == datetime.now(UTC).date()
    assert charts.cost_per_workflow(runs)[:2] == [("x", 3.0, 1), ("y", 0.5, 1)]
    assert charts.success_rate(runs) == pytest.approx(3 / 5) and charts.success_rate([]) is None
    assert charts.runs_figure(charts.runs_per_day([], today=date(2025, 1, 1))) is not None
    assert charts.cost_figure([]) is not None


# --- the run form --------------------------------------------------------------------------------


def test_run_form_widgets_and_values() -> None:
    specs = {
        "count": InputSpec(type="integer", default=5), "ratio": InputSpec(type="number"),
        "on": InputSpec(type="boolean", default=True), "who": InputSpec(type="string", default="x"),
        "opt": InputSpec(type="string", required=False), "cfg": InputSpec(type="object", default={"a": 1}),
        "ids": InputSpec(type="array", description="ids to fetch"),
    }
    widgets = {name: input_widget(name, spec) for name, spec in specs.items()}
    assert type(widgets["count"]).__name__ == "IntInput" and widgets["count"].value == 5
    assert type(widgets["on"]).__name__ == "Checkbox" and widgets["ids"].label == "ids * — ids to fetch"
    widgets["opt"].value = ""
    widgets["ids"].value = "[1, 2"
    values, problems = read_inputs(widgets, specs)
    assert values == {"count": 5, "on": True, "who": "x", "cfg": {"a": 1}}
    assert len(problems) == 1 and problems[0].startswith("ids: not valid JSON")
    widgets["ids"].value = "[1, 2]"
    widgets["ratio"].value = 0.5
    assert read_inputs(widgets, specs)[0]["ids"] == [1, 2]


# --- history, generation, list -----------------------------------------------------------------


def test_diff_html_colours_lines_and_escapes() -> None:
    html = diff_html("--- a\n+++ b\n@@ -1 +1 @@\n-old <x>\n+new\n same")
    assert '<div class="del">-old &lt;x&gt;</div>' in html and '<div class="add">+new</div>' in html
    assert '<div class="hunk">' in html and '<div class="file">' in html
    assert "No differences" in diff_html("")


def test_generated_workflow_is_shown_with_its_diff_and_not_saved() -> None:
    from velocitymesh.flows.generation import generate_workflow
    from velocitymesh.server.dashboard.describe import result_html

    result = asyncio.run(generate_workflow("every weekday at 9 fetch https://example.com/a.json and summarise it",
                                           offline=True))
    html = result_html(result, CHAIN)
    assert "offline planner" in html and "Nothing is saved" in html
    assert "Changes against the editor" in html and 'class="add"' in html


def test_workflow_search_and_ages() -> None:
    rows = [WorkflowRow("hn-digest", "Summarise Hacker News", "manual", 3, 1, None, None, None),
            WorkflowRow("sales", "Daily sales report", "⏱ 0 9 * * *", 5, 2, "failed", None, "r")]
    assert [r.name for r in filter_rows(rows, "  ")] == ["hn-digest", "sales"]
    assert [r.name for r in filter_rows(rows, "SALES report")] == ["sales"]
    assert filter_rows(rows, "nothing") == []
    now = datetime(2025, 1, 2, tzinfo=UTC)
    assert ago(now - timedelta(seconds=5), now) == "just now"
    assert ago(now - timedelta(hours=2), now) == "2 hours ago" and ago(None) == ""


# --- who is asking ----------------------------------------------------------------------------------


def test_user_payload_round_trip_and_roles() -> None:
    user = AuthUser(id="u1", username="ann", role="editor", workspace_id="w1", workspace_name="default",
                    via="session", token_id="secret-id")
    payload = user_payload(user)
    assert payload is not None and "token_id" not in payload
    back = user_from_payload(json.loads(json.dumps(payload)))
    assert back is not None and back.username == "ann" and back.role == "editor"
    assert user_from_payload({"id": "x"}) is None and user_from_payload(None) is None
    assert can_write(back) and not can_write(None)
    assert not can_write(AuthUser("u", "v", "viewer", "w1"))


# --- against the real store, engine and bus ----------------------------------------------------------


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    built = Services.build(settings)
    yield built
    await built.aclose()


def _ctx(services: Services, role: str = "owner") -> PageContext:
    user = AuthUser("u1", "ann", role, services.workspace.id, services.workspace.name)
    return PageContext(services, user, None)


async def test_run_follower_sees_every_step_finish(services: Services) -> None:
    from velocitymesh.flows.recorder import run_channel
    from velocitymesh.server.dashboard.live import RunFollower

    ctx = _ctx(services)
    seen: list[tuple[str, dict[str, str]]] = []
    done = asyncio.Event()

    def changed(state: RunState, _what: set[str]) -> None:
        seen.append((state.status, state.statuses()))
        if state.finished:
            done.set()

    follower = RunFollower(ctx, changed)
    spec = load_workflow_text(CHAIN)
    run_id = await follower.start_and_follow(lambda: ctx.engine().start(spec, {}))
    await asyncio.wait_for(done.wait(), 10)
    assert follower.state is not None and follower.state.run_id == run_id
    assert seen[-1] == ("succeeded", {"a": "succeeded", "b": "succeeded", "c": "succeeded"})
    assert follower.state.steps["b"].output == "hello world!"
    assert ctx.task_count == 1
    ctx.close()  # the session ends: its tasks stop and the subscription closes
    await asyncio.sleep(0.05)
    # (the engine itself listens for cancel requests from other processes while it lives)
    assert ctx.task_count == 0 and services.bus.subscription_count(run_channel(run_id)) == 0  # type: ignore[attr-defined]


async def test_pages_build_from_the_store(services: Services) -> None:
    from velocitymesh.server.dashboard.deployments import deployments_page
    from velocitymesh.server.dashboard.overview import overview_page
    from velocitymesh.server.dashboard.secret_names import secrets_page
    from velocitymesh.server.dashboard.workflow import WorkflowPage
    from velocitymesh.server.dashboard.workflows import load_rows, workflows_page

    ctx = _ctx(services)
    spec = load_workflow_text(CHAIN.replace("name: chain", "name: chain\ntrigger: {schedule: {cron: '0 9 * * *'}}"))
    with services.session() as s:
        store.save_workflow(s, services.workspace.id, spec, author="ann")
    await ctx.engine().run_saved("chain")
    assert [r.last_status for r in load_rows(ctx)] == ["succeeded"]
    for page in (overview_page, workflows_page, secrets_page, deployments_page):
        assert page(ctx)
    page = WorkflowPage(ctx, "chain")
    assert page.latest is not None and page.latest.number == 1 and len(page.runs.value) == 1
    assert page.save.disabled  # nothing changed yet
    page.editor.set_text(page.editor.text.replace("value: 2", "value: 3"))
    assert not page.save.disabled and page.editor.dirty
    page._save()
    assert page.latest.number == 2 and "Saved version 2" in page.message.object
    assert page.history.table.value["version"].tolist() == [2, 1]
    assert "value: 3" in page.history.diff.object  # the diff of v1 → v2, coloured
    page.history.restore_pick.value = 1
    page.history._restore()  # restoring makes a new version; old ones never change
    assert page.latest.number == 3 and "value: 2" in page.editor.text and not page.editor.dirty
    assert "restored as version 3" in page.history.message.object
    viewer = WorkflowPage(_ctx(services, "viewer"), "chain")
    assert not viewer.save.visible and not viewer.run.visible and viewer.editor.code.readonly
    ctx.close()


async def test_mounted_pages_carry_the_user_but_never_the_cookie(settings: Settings) -> None:
    from velocitymesh.server.app import create_app
    from velocitymesh.server.auth import make_session_cookie

    app = create_app(settings)
    services = app.state.services
    with services.session() as s:
        user = store.create_user(s, "ann", None, services.workspace.id, "editor")
    paths = {getattr(r, "path", "") for r in app.routes}
    for path in PAGES:
        assert path in paths and (path.rstrip("/") + "/ws") in paths
    cookie = make_session_cookie(services, user.id, user.username)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{settings.port}") as client:
        anonymous = await client.get("/workflows")
        assert anonymous.status_code in (302, 303, 307) and "/login" in anonymous.headers["location"]
        client.cookies.set("vm_session", cookie)
        page = await client.get("/workflows")
    assert page.status_code == 200
    assert cookie not in page.text and cookie.split(".")[0] not in page.text
    assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", page.text.replace("http://www.w3.org", ""))
    token = re.search(r'"token":\s*"([^"]+)"|token\s*=\s*"([^"]+)"', page.text)
    assert token is not None
    jwt = next(g for g in token.groups() if g)
    from bokeh.util.token import get_token_payload

    payload = get_token_payload(jwt)
    assert payload["vm_user"]["username"] == "ann" and payload["vm_user"]["role"] == "editor"
    assert payload["cookies"] == {} and "Cookie" not in str(payload.get("headers", {}))
    assert len(jwt.split(".")) == 2 and jwt.split(".")[1]  # "payload.signature": sessions are signed
    await services.aclose()


def test_pages_table_names_a_module_and_function_each() -> None:
    import importlib

    for module_name, function_name, title, active in PAGES.values():
        module = importlib.import_module(f"velocitymesh.server.dashboard.{module_name}")
        assert callable(getattr(module, function_name)) and title and active
