"""The offline planner: schedules in words, clauses → steps, chaining, what it says it could not map,
edits — every plan validated by the real validator."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from generate_helpers import catalogue_all, validate_all

from velocitymesh.agents.generate import generate
from velocitymesh.agents.planner import plan
from velocitymesh.agents.schedule_words import describe_cron, parse_schedule
from velocitymesh.flows.generation import catalogue, generate_workflow
from velocitymesh.workspace.spec import Workflow
from velocitymesh.workspace.yamlio import load_workflow_text

HN = "https://hacker-news.firebaseio.com/v0/topstories.json"
SLACK = "https://hooks.slack.com/services/T0/B0/XYZ"


@pytest.mark.parametrize(
    ("words", "cron", "tz"),
    [
        ("every weekday at 9", "0 9 * * 1-5", None),
        ("every monday at 8:30am", "30 8 * * 1", None),
        ("daily at 18:00", "0 18 * * *", None),
        ("every hour", "0 * * * *", None),
        ("every 15 minutes", "*/15 * * * *", None),
        ("at noon on the first of every month", "0 12 1 * *", None),
        ("every weekend", "0 0 * * 0,6", None),
        ("every weekday at 9 in Europe/Paris", "0 9 * * 1-5", "Europe/Paris"),
        ("daily at 7 Paris time", "0 7 * * *", "Europe/Paris"),
        ("at 9 in London", "0 9 * * *", "Europe/London"),
        ("mondays at 6pm PST", "0 18 * * 1", "America/Los_Angeles"),
        ("every monday and thursday at 10", "0 10 * * 1,4", None),
        ("every 15 minutes between 9 and 17 on weekdays", "*/15 9-17 * * 1-5", None),
        ("every evening at 7", "0 19 * * *", None),
        ("every sunday evening", "0 18 * * 0", None),
        ("hourly at :15", "15 * * * *", None),
        ("at 9am and 5pm", "0 9,17 * * *", None),
        ("on the last day of every month at 23:00", "0 23 L * *", None),
        ("every day at half past 8 (CET)", "30 8 * * *", "Europe/Paris"),
        ("every 2 hours", "0 */2 * * *", None),
        ("every sunday at midnight UTC", "0 0 * * 0", "UTC"),
        ("at 6pm New York time", "0 18 * * *", "America/New_York"),
    ],
)
def test_schedule_words(words: str, cron: str, tz: str | None) -> None:
    found = parse_schedule(words)
    assert (found.cron, found.timezone) == (cron, tz)
    assert found.unmapped == []


@pytest.mark.parametrize("words", ["every other tuesday", "every 30 seconds", "twice a day", "fortnightly"])
def test_schedule_words_not_understood_are_reported(words: str) -> None:
    found = parse_schedule(words)
    assert found.unmapped and found.cron is None


def test_no_schedule_words() -> None:
    found = parse_schedule("fetch the top 5 amazing stories and for each story summarise it")
    assert found.cron is None and found.unmapped == [] and found.timezone is None


def test_describe_cron() -> None:
    assert describe_cron("0 9 * * 1-5") == "at 09:00 on weekdays"
    assert describe_cron("*/15 * * * *") == "every 15 minutes"
    assert describe_cron("0 12 1 * *") == "at 12:00 on day 1 of every month"


def planned(request: str, **kw: Any) -> tuple[Workflow, Any]:
    p = plan(request, catalogue=catalogue_all(), **kw)
    wf, problems = validate_all(p.data)
    assert wf is not None and not [x for x in problems if x.severity == "error"], problems
    return wf, p


def test_the_design_example() -> None:
    wf, p = planned(f"every weekday at 9 fetch {HN}, summarise them and post the summary to slack {SLACK}")
    assert [(s.id, s.kind, s.needs) for s in wf.steps] == [
        ("fetch", "http", []), ("summarise", "llm", ["fetch"]), ("post", "http", ["summarise"])]
    assert wf.trigger.schedule is not None and wf.trigger.schedule.cron == "0 9 * * 1-5"
    assert wf.steps[0].with_ == {"url": HN}
    prompt = wf.steps[1].with_["prompt"]
    assert prompt.startswith("Summarise the following") and "{{ steps.fetch.output.json or" in prompt
    assert wf.steps[2].with_ == {"url": SLACK, "method": "POST", "json": {"text": "{{ steps.summarise.output.text }}"}}
    assert p.unmapped == []
    assert "Runs at 09:00 on weekdays (UTC)." in p.explanation


def test_sql_post_and_timezone() -> None:
    wf, _ = planned("Every Monday at 8:30am Paris time, download https://example.com/sales.json, then get the top 5 "
                    "by revenue and send them to https://example.com/hook")
    assert [s.kind for s in wf.steps] == ["http", "sql", "http"]
    assert wf.trigger.schedule is not None
    assert (wf.trigger.schedule.cron, wf.trigger.schedule.timezone) == ("30 8 * * 1", "Europe/Paris")
    sql = wf.steps[1].with_
    assert sql["query"] == 'select * from "download" order by "revenue" desc limit 5'
    assert sql["tables"] == {"download": "download.json"}
    assert wf.steps[2].with_["json"] == {"data": "{{ steps.top.output.rows }}"}


def test_parallel_fetches_join_at_the_next_step() -> None:
    wf, _ = planned("fetch https://a.example.com/x.json and https://b.example.com/y.json, then summarize both")
    assert [(s.id, s.needs) for s in wf.steps] == [("fetch", []), ("fetch_2", []), ("summarize", ["fetch", "fetch_2"])]
    prompt = wf.steps[2].with_["prompt"]
    assert "steps.fetch.output" in prompt and "steps.fetch_2.output" in prompt


def test_then_chains_even_sources() -> None:
    wf, _ = planned("fetch https://a.example.com/a, then fetch https://a.example.com/b, then summarise both")
    assert [s.needs for s in wf.steps] == [[], ["fetch"], ["fetch_2"]]


def test_slack_without_url_reads_a_secret_and_says_so() -> None:
    wf, p = planned(f"fetch {HN} and post it to slack")
    assert wf.steps[1].with_["url"] == "{{ secrets.slack_webhook_url }}"
    assert "velocitymesh secrets set slack_webhook_url" in p.explanation


def test_classify_gets_a_schema_and_later_steps_read_its_json() -> None:
    wf, _ = planned("Fetch https://api.example.com/reviews, classify each review as positive, neutral or negative, "
                    "then count them by category with SQL")
    assert [s.kind for s in wf.steps] == ["http", "llm", "sql"]
    schema = wf.steps[1].with_["schema"]
    assert schema["properties"]["category"]["enum"] == ["positive", "neutral", "negative"]
    assert wf.steps[2].with_["tables"] == {"classify": "classify.json"}


def test_for_each_maps_over_the_previous_output() -> None:
    wf, _ = planned("fetch https://api.example.com/items and for each item summarise it")
    step = wf.steps[1]
    assert step.map is not None and step.map.over == "{{ steps.fetch.output.json }}"
    assert "{{ item }}" in step.with_["prompt"]


def test_summarise_a_url_fetches_it_first() -> None:
    wf, _ = planned("Summarize https://blog.example.com/post/42 in three bullet points")
    assert [s.kind for s in wf.steps] == ["http", "llm"]
    assert wf.steps[1].with_["prompt"].startswith("Summarize https://blog.example.com/post/42 in three bullet points")


def test_no_upstream_text_becomes_an_input() -> None:
    wf, _ = planned("translate the input into French")
    assert list(wf.inputs) == ["text"]
    assert wf.steps[0].with_["prompt"].endswith("{{ inputs.text }}")


def test_approval_keeps_the_data_reference_upstream() -> None:
    wf, _ = planned("fetch https://example.com/orders.json, count the orders by country with SQL, then wait for "
                    "approval from alice and post to https://example.com/hook")
    assert [s.kind for s in wf.steps] == ["http", "sql", "approval", "http"]
    assert wf.steps[2].with_["approvers"] == ["alice"]
    assert wf.steps[3].needs == ["approve"]  # count is upstream through approve, so it may be read
    assert wf.steps[3].with_["json"] == {"data": "{{ steps.count.output.rows }}"}


def test_python_skeleton_and_webhook_trigger() -> None:
    wf, p = planned("when a webhook arrives, fetch https://example.com/a.json and filter it with python")
    assert wf.trigger.webhook is not None
    assert wf.steps[1].kind == "python" and "def main(data):" in wf.steps[1].with_["code"]
    assert wf.steps[1].with_["args"] == {"data": "{{ steps.fetch.output.json }}"}
    assert "Python skeleton" in p.explanation


def test_notebook_and_sub_workflow() -> None:
    wf, _ = planned("every night run the notebook etl/clean.ipynb, then run the workflow sales-report")
    assert [(s.id, s.kind) for s in wf.steps] == [("clean", "notebook"), ("run_sales_report", "workflow")]
    assert wf.steps[0].with_ == {"path": "etl/clean.ipynb"}
    assert wf.steps[1].with_ == {"workflow": "sales-report"}


def test_a_kind_not_in_the_catalogue_is_reported_not_emitted() -> None:
    p = plan(f"fetch {HN} then run the notebook report.ipynb",
             catalogue=[e for e in catalogue_all() if e["name"] != "notebook"])
    assert [s["kind"] for s in p.data["steps"]] == ["http"]
    assert p.unmapped == ["run the notebook report.ipynb (needs the notebook step kind, which is not installed)"]


@pytest.mark.parametrize(
    ("request_", "unmapped"),
    [
        (f"fetch {HN} and email it to bob@example.com", "email it to bob@example.com (there is no e-mail step kind"),
        (f"fetch {HN} and if it is empty notify {SLACK}", "if it is empty (conditions are not mapped"),
        (f"fetch {HN}. Make me a sandwich.", "Make me a sandwich"),
        (f"every other tuesday fetch {HN}", "every other tuesday (schedule not understood)"),
        ("post it somewhere nice", "post it somewhere nice (no URL to send to)"),
        (f"fetch {HN} and save it", "save it (there is no storage step kind"),
    ],
)
def test_what_it_cannot_map_is_said(request_: str, unmapped: str) -> None:
    p = plan(request_, catalogue=catalogue_all())
    assert any(u.startswith(unmapped) for u in p.unmapped), p.unmapped
    assert "Not understood (left out): " in p.explanation


def test_a_partly_understood_schedule_is_left_out() -> None:
    p = plan(f"every other week on friday fetch {HN}", catalogue=catalogue_all())
    assert "trigger" not in p.data
    assert "The schedule was left out" in p.explanation
    assert p.explanation.startswith("Runs when started: the schedule was not understood")


def test_nouns_that_are_also_verbs_do_not_start_steps() -> None:
    wf, _ = planned(f"fetch {HN} and summarise the title and score")
    assert [s.kind for s in wf.steps] == ["http", "llm"]


def test_name_and_description() -> None:
    p = plan(f"fetch {HN}", catalogue=catalogue_all())
    assert p.data["name"] == "fetch" and p.data["description"] == f"fetch {HN}"
    assert plan(f"fetch {HN}", catalogue=catalogue_all(), name="hn").data["name"] == "hn"


# --- edits ---------------------------------------------------------------------------------------

CURRENT = f"""
name: hn-digest
trigger: {{schedule: {{cron: "0 9 * * 1-5"}}}}
steps:
  - {{id: fetch, kind: http, with: {{url: "{HN}"}}}}
  - id: summarise
    kind: llm
    needs: [fetch]
    with: {{model: openai:gpt-4o-mini, prompt: "Summarise {{{{ steps.fetch.output.json }}}}"}}
  - id: post
    kind: http
    needs: [summarise]
    with: {{url: "{SLACK}", method: POST, json: {{text: "{{{{ steps.summarise.output.text }}}}"}}}}
"""


def test_edit_schedule_and_model_and_append() -> None:
    current = load_workflow_text(CURRENT)
    wf, p = planned("change the schedule to every monday at 8 Paris time, use anthropic:claude-sonnet-4-5 and also "
                    "translate it into French", current=current)
    assert wf.name == "hn-digest"
    assert wf.trigger.schedule is not None
    assert (wf.trigger.schedule.cron, wf.trigger.schedule.timezone) == ("0 8 * * 1", "Europe/Paris")
    assert wf.steps[1].with_["model"] == "anthropic:claude-sonnet-4-5"
    new = wf.steps[-1]
    assert (new.id, new.kind, new.needs) == ("translate", "llm", ["post"])
    assert new.with_["prompt"].startswith("Translate it into French:")
    assert "{{ steps.summarise.output.text }}" in new.with_["prompt"]  # the last step that produces data
    assert p.unmapped == []


def test_edit_timezone_only_moves_the_existing_schedule() -> None:
    wf, _ = planned("use Tokyo time", current=load_workflow_text(CURRENT))
    assert wf.trigger.schedule is not None
    assert (wf.trigger.schedule.cron, wf.trigger.schedule.timezone) == ("0 9 * * 1-5", "Asia/Tokyo")


def test_edit_remove_a_step_that_nothing_reads() -> None:
    wf, _ = planned("remove the post step", current=load_workflow_text(CURRENT))
    assert [s.id for s in wf.steps] == ["fetch", "summarise"]


async def test_edit_that_breaks_the_workflow_returns_no_spec() -> None:
    current = load_workflow_text(CURRENT)
    result = await generate("remove the fetch step", validate=validate_all, catalogue=catalogue_all(),
                            current=current, offline=True)
    assert result.spec is None  # summarise still reads steps.fetch: nothing invalid comes back
    assert any("there is no step 'fetch'" in p.message for p in result.errors)
    assert result.draft is not None and result.diff is None


async def test_edit_result_carries_a_diff() -> None:
    result = await generate_workflow("every day at 7", current=load_workflow_text(CURRENT), offline=True)
    assert result.valid and result.diff is not None
    assert '-    cron: 0 9 * * 1-5\n+    cron: 0 7 * * *' in result.diff


# --- wired and benchmarked ---------------------------------------------------------------------


async def test_wired_wrapper_uses_the_registry() -> None:
    result = await generate_workflow(f"every 15 minutes check {HN} and classify it as ok, degraded or down",
                                     offline=True)
    assert result.valid and result.source == "offline" and result.unmapped == []
    assert {e["name"] for e in catalogue()} >= {"http", "sql", "llm", "python", "transform", "approval"}


def _bench() -> Any:
    path = Path(__file__).parents[2] / "bench" / "generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate_planner", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_generate_planner"] = module
    spec.loader.exec_module(module)
    return module


async def test_request_corpus_share_and_validity() -> None:
    bench = _bench()
    validate, cat, _ = bench.wiring()
    report = await bench.run_planner(validate, cat)
    rows = report["rows"]
    assert len(rows) >= 30
    assert sum(r["accepted_invalid"] for r in rows) == 0
    mapped = sum(not r["misses"] for r in rows)
    assert mapped / len(rows) >= 0.8, json.dumps([r for r in rows if r["misses"]], indent=2)
