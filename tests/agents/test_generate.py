"""Natural-language generation: tolerant parsing, the validate → repair loop, edits, budgets,
the offline fallback — with a scripted model that goes through the real provider registry."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from generate_helpers import GenScript, script

from velocitymesh.agents.answer_parsing import CUT_OFF, parse_answer
from velocitymesh.agents.budget import Budget
from velocitymesh.agents.cost import prompt_bound
from velocitymesh.agents.generate import (
    build_system_prompt,
    configured_model,
    example_workflows,
    generate,
    repair_message,
)
from velocitymesh.errors import BudgetExceeded
from velocitymesh.flows.generation import catalogue, generate_workflow
from velocitymesh.flows.validation import parse_and_validate_workflow
from velocitymesh.settings import Settings
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.yamlio import load_workflow_text

GOOD = """name: ping
steps:
  - id: call
    kind: http
    with: {url: "https://example.com/health"}
"""
UNKNOWN_KIND = GOOD.replace("kind: http", "kind: htp")
CYCLE = """name: loop
steps:
  - {id: a, kind: transform, needs: [b], with: {value: 1}}
  - {id: b, kind: transform, needs: [a], with: {value: 2}}
"""


def fenced(body: str, prose: str = "It calls the health endpoint.") -> str:
    return f"Here is the workflow:\n\n```yaml\n{body}```\n\n{prose}\n"


async def gen(model: Any, request: str = "check the health endpoint", **kw: Any) -> Any:
    return await generate(request, validate=parse_and_validate_workflow, catalogue=catalogue(), model=model,
                          examples=[], **kw)


# --- parsing answers ---------------------------------------------------------------------------

PARSE_CASES = {
    "fenced yaml": (fenced(GOOD), "It calls the health endpoint."),
    "fenced json": ('```json\n{"name": "ping", "steps": []}\n```', ""),
    "no language": ("```\nname: ping\nsteps: []\n```", ""),
    "tilde fence": ("~~~yaml\nname: ping\nsteps: []\n~~~\nDone.", "Done."),
    "bare yaml with prose": (
        "Sure, here it is.\nname: ping\nsteps: []\n\nThat is all.", "Sure, here it is.\n\nThat is all."
    ),
    "bare json in prose": ('The answer: {"name": "ping", "steps": []} — enjoy', "The answer: \n — enjoy"),
    "json wrapper": ('{"workflow": {"name": "ping", "steps": []}, "explanation": "Pings."}', "Pings."),
    "yaml text in wrapper": ('{"workflow": "name: ping\\nsteps: []\\n", "explanation": "Pings."}', "Pings."),
    "trailing commas": ('{"name": "ping", "steps": [1, 2,],}', ""),
    "json comments": ('{\n  // a slug\n  "name": "ping", /* why */ "steps": []\n}', ""),
    "bold label": ("```yaml\nname: ping\nsteps: []\n```\n**Explanation:** pings", "pings"),
}


@pytest.mark.parametrize("name", list(PARSE_CASES))
def test_parse_answer_shapes(name: str) -> None:
    text, explanation = PARSE_CASES[name]
    parsed = parse_answer(text)
    assert parsed.problems == []
    assert isinstance(parsed.data, dict) and parsed.data["name"] == "ping"
    assert parsed.explanation == explanation


def test_parse_answer_skips_a_non_workflow_fence() -> None:
    text = 'Output looks like:\n```json\n{"status": 200}\n```\nWorkflow:\n```yaml\nname: ping\nsteps: []\n```\n'
    assert parse_answer(text).data == {"name": "ping", "steps": []}


def test_a_fence_inside_a_block_scalar_does_not_close_the_answer() -> None:
    body = (
        "name: ping\nsteps:\n  - id: a\n    kind: llm\n    with:\n      prompt: |\n"
        "        like\n        ```\n        x\n"
    )
    parsed = parse_answer(f"```yaml\n{body}```\n")
    assert parsed.data["steps"][0]["with"]["prompt"] == "like\n```\nx\n"


def test_prose_bullets_after_bare_yaml_are_not_part_of_it() -> None:
    parsed = parse_answer("name: ping\nsteps:\n  - {id: a, kind: http}\n\n- It pings\n- Once")
    assert parsed.data == {"name": "ping", "steps": [{"id": "a", "kind": "http"}]}


@pytest.mark.parametrize(
    ("text", "finish"),
    [
        (fenced(GOOD), "length"),  # readable, but the model stopped at max_tokens: incomplete
        ('{"name": "ping", "steps": [{"id": "a", "kind": "ht', "stop"),
        ("```yaml\nname: ping\nsteps:\n  - id: a\n    with: {url: \"https://exa", "stop"),
    ],
)
def test_cut_off_answers(text: str, finish: str) -> None:
    parsed = parse_answer(text, finish_reason=finish)
    assert parsed.data is None and parsed.cut_off
    assert parsed.problems[0].message == CUT_OFF


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the answer was empty"),
        ("I cannot help with that.", "the answer holds no workflow"),
        ("```yaml\nname: ping\n  steps: [\n```", "the answer could not be read"),
    ],
)
def test_unreadable_answers_are_problems_not_exceptions(text: str, message: str) -> None:
    parsed = parse_answer(text)
    assert parsed.data is None
    assert parsed.problems[0].message.startswith(message)


# --- the loop ----------------------------------------------------------------------------------


async def test_valid_first_answer_through_the_registry_with_cost(settings: Settings) -> None:
    settings.prices = {"genscript:first": {"input": 1.0, "output": 2.0}}
    model = script("first", fenced(GOOD))
    result = await gen("genscript:first", settings=settings)
    assert result.valid and result.spec is not None and result.spec.name == "ping"
    assert result.yaml is not None and load_workflow_text(result.yaml) == result.spec
    assert result.explanation == "It calls the health endpoint."
    assert (result.rounds, result.source, result.model) == (1, "model", "genscript:first")
    assert result.cost_usd == pytest.approx((100 * 1.0 + 50 * 2.0) / 1e6)
    assert result.problems == [] and result.diff is None
    system = model.requests[0].messages[0]
    assert system.role == "system" and '"title":"VelocityMesh workflow"' in (system.content or "")


async def test_problems_go_back_numbered_with_paths_and_hints() -> None:
    model = GenScript("repair", [fenced(UNKNOWN_KIND), fenced(GOOD)])
    result = await gen(model)
    assert result.valid and result.rounds == 2
    second = model.requests[1].messages
    assert [m.role for m in second] == ["system", "user", "assistant", "user"]
    assert second[2].content == fenced(UNKNOWN_KIND)  # the model sees what it wrote
    feedback = second[3].content or ""
    assert "1. steps[0].kind: unknown step kind 'htp' — hint: did you mean 'http'?" in feedback
    assert "```yaml" in feedback


async def test_several_rounds_then_valid() -> None:
    model = GenScript("rounds", [("```yaml\nname: x\nsteps:\n  - id: a", "length"), fenced(CYCLE), fenced(GOOD)])
    result = await gen(model)
    assert result.valid and result.rounds == 3
    assert CUT_OFF in (model.user_messages(1)[-1])
    assert "needs form a cycle: a → b → a" in model.user_messages(2)[-1]


async def test_a_model_that_never_fixes_it_gives_no_spec() -> None:
    model = GenScript("stubborn", [fenced(UNKNOWN_KIND)] * 4)
    result = await gen(model)
    assert result.spec is None and result.yaml is None and not result.valid
    assert result.rounds == 4  # the first answer and three repairs
    assert [p.path for p in result.errors] == ["steps[0].kind"]
    assert result.draft is not None and "kind: htp" in result.draft
    assert model.replies == []


async def test_max_repairs_zero_asks_once() -> None:
    model = GenScript("once", [fenced(UNKNOWN_KIND)])
    result = await gen(model, max_repairs=0)
    assert result.rounds == 1 and result.spec is None


async def test_warnings_do_not_block_and_stay_listed() -> None:
    body = GOOD.replace("steps:", "inputs:\n  unused: {type: string, default: x}\nsteps:")
    result = await gen(GenScript("warn", [fenced(body)]))
    assert result.valid and result.rounds == 1
    assert [p.severity for p in result.problems] == ["warning"]


async def test_spec_is_none_whenever_the_validator_reports_an_error() -> None:
    def validate(data: Any) -> Any:
        wf, problems = parse_and_validate_workflow(data)
        return wf, [*problems, Problem("steps[0]", "policy: no http today")]  # a workflow *and* an error

    model = GenScript("policy", [fenced(GOOD)] * 4)
    result = await generate("x", validate=validate, catalogue=[], model=model, examples=[])
    assert result.spec is None and result.rounds == 4
    assert "policy: no http today" in model.user_messages(1)[-1]


async def test_a_validator_that_raises_never_passes_a_document() -> None:
    def broken(data: Any) -> Any:
        raise RuntimeError("boom")

    result = await generate("x", validate=broken, catalogue=[], model=GenScript("b", [fenced(GOOD)]), examples=[],
                            max_repairs=0)
    assert result.spec is None
    assert "could not be validated: RuntimeError: boom" in result.problems[0].message


async def test_edit_sees_the_current_yaml_and_returns_a_diff() -> None:
    current = load_workflow_text(GOOD)
    edited = GOOD + (
        '  - {id: report, kind: transform, needs: [call], with: {value: "{{ steps.call.output.status }}"}}\n'
    )
    model = GenScript("edit", [fenced(edited)])
    result = await gen(model, "also report the status", current=current)
    first_user = model.user_messages(0)[0]
    assert "Here is the current workflow" in first_user and "https://example.com/health" in first_user
    assert "also report the status" in first_user
    assert result.diff is not None and result.diff.startswith("--- ping (current)\n+++ ping (generated)\n")
    assert "+- id: report" in result.diff


async def test_token_budget_refuses_before_sending() -> None:
    model = GenScript("budget", [fenced(GOOD)])
    with pytest.raises(BudgetExceeded):
        await gen(model, budget=Budget(tokens=50, label="generation"))
    assert model.requests == []  # nothing was sent


async def test_budget_running_out_mid_repair_stops_with_a_problem() -> None:
    probe = GenScript("probe", [fenced(UNKNOWN_KIND)])
    await gen(probe, max_repairs=0)
    first = probe.requests[0]
    # room for the first call's worst case, not for the second's (its prompt also holds the answer and the problems)
    budget = Budget(tokens=prompt_bound(first) + first.max_tokens + 100, label="generation")
    model = GenScript("budget2", [fenced(UNKNOWN_KIND), fenced(GOOD)])
    result = await gen(model, budget=budget)
    assert result.spec is None and result.rounds == 1
    assert result.problems[-1].message.startswith("stopped repairing: the next model call could use up to")
    assert len(model.requests) == 1


async def test_no_provider_falls_back_to_the_offline_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "VM_COMPATIBLE_BASE_URL", "VM_DEFAULT_MODEL"):
        monkeypatch.delenv(var, raising=False)
    result = await generate_workflow("every hour fetch https://example.com/status.json",
                                     settings=Settings(env="test"))
    assert result.source == "offline" and result.valid and result.rounds == 0 and result.cost_usd == 0
    assert result.spec is not None and result.spec.trigger.schedule is not None


async def test_empty_request() -> None:
    result = await gen(GenScript("empty", []), "   ")
    assert result.spec is None and result.problems[0].message == "the request is empty"


def test_configured_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "VM_COMPATIBLE_BASE_URL", "VM_DEFAULT_MODEL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(env="test")
    assert configured_model(s) is None
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    assert configured_model(s) == "anthropic:claude-sonnet-4-5"
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    assert configured_model(s) == s.default_model  # the default model's provider is configured
    assert configured_model(Settings(env="test", default_model="anthropic:claude-haiku-4-5")) == (
        "anthropic:claude-haiku-4-5")
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert configured_model(Settings(env="test", compatible_base_url="http://127.0.0.1:11434/v1")) == (
        "compatible:llama3.1")


def test_system_prompt_has_schema_catalogue_and_examples() -> None:
    prompt = build_system_prompt(catalogue())
    assert '"title":"VelocityMesh workflow"' in prompt
    for kind in ("http", "sql", "llm", "python"):
        assert f"### {kind}: " in prompt
    assert '"url":{' in prompt  # the http kind's config schema
    assert "output: {status, headers, url, json" in prompt
    assert len(example_workflows()) >= 2
    assert "name: sales-report" in prompt


def test_repair_message_lists_errors_then_warnings() -> None:
    text = repair_message([Problem("a", "bad", "fix it"), Problem("b", "meh", severity="warning"), Problem("", "x")])
    assert text.splitlines()[:3] == [
        "The workflow you wrote has 2 problems:",
        "1. a: bad — hint: fix it",
        "2. (the whole answer): x",
    ]
    assert "- b: meh" in text


# --- the corpus (the benchmark's, run here fast) -------------------------------------------------


def _bench() -> Any:
    path = Path(__file__).parents[2] / "bench" / "generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_generate"] = module
    spec.loader.exec_module(module)
    return module


async def test_malformed_answer_corpus_no_invalid_spec_accepted() -> None:
    bench = _bench()
    validate, cat, _ = bench.wiring()
    report = await bench.run_repairs(validate, cat, verbose=False)
    rows = report["rows"]
    assert len(rows) >= 40
    assert sum(r["accepted_invalid"] for r in rows) == 0
    misses = [r for r in rows if r["valid"] != r["expected"] or r["rounds"] != r["expected_rounds"]]
    assert misses == [], json.dumps(misses, indent=2)
    assert sum(not r["expected"] for r in rows) >= 3  # unrepairable cases are in the corpus, and rejected
