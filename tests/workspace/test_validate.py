"""Validation: every problem at once, each with its exact path, a message and a hint."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, model_validator

from velocitymesh.errors import SpecError
from velocitymesh.flows.steps.base import StepKind, StepResult
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.spec import Workflow
from velocitymesh.workspace.validate import check_spec, parse_and_validate, validate_spec


class Retry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    times: int


class HttpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    method: Literal["GET", "POST"] = "GET"
    timeout: float = 10.0
    headers: dict[str, str] = {}
    retry: Retry | None = None


class TransformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Any = None


class PickyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int = 0
    b: int = 0

    @model_validator(mode="after")
    def _one(self) -> PickyConfig:
        if self.a and self.b:
            raise ValueError("give a or b, not both")
        return self


async def _run(config: Any, ctx: Any) -> StepResult:
    return StepResult()


def _http_check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    url = config.get("url")
    if isinstance(url, str) and url.startswith("http://"):
        return [("url", "plain http is not allowed", "use https://")]
    return []


def _broken_check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    raise RuntimeError("boom")


KINDS = {
    "http": StepKind("http", HttpConfig, _run, check=_http_check),
    "transform": StepKind("transform", TransformConfig, _run),
    "picky": StepKind("picky", PickyConfig, _run),
    "broken": StepKind("broken", TransformConfig, _run, check=_broken_check),
}


def wf(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "t", "steps": list(steps), **top}


def step(sid: str, kind: str = "transform", *, with_: Any = None, **kw: Any) -> dict[str, Any]:
    return {"id": sid, "kind": kind, **({} if with_ is None else {"with": with_}), **kw}


def found(spec: Any, **kw: Any) -> list[tuple[str, str, str, str]]:
    return [(p.path, p.message, p.hint, p.severity) for p in validate_spec(spec, kinds=KINDS, **kw)]


def paths(spec: Any, **kw: Any) -> list[str]:
    return [p[0] for p in found(spec, **kw)]


def one(spec: Any, path: str) -> tuple[str, str, str, str]:
    matches = [p for p in found(spec) if p[0] == path]
    assert len(matches) == 1, found(spec)
    return matches[0]


GOOD = """
name: hn-digest
trigger:
  schedule: {cron: "0 9 * * 1-5", timezone: Europe/Paris}
inputs:
  count: {type: integer, default: 5}
steps:
  - id: top
    kind: http
    with: {url: "https://hacker-news.firebaseio.com/v0/topstories.json", timeout: "{{ inputs.count }}"}
  - id: pick
    kind: transform
    needs: [top]
    with: {value: "{{ steps.top.output.json[:inputs.count] }}"}
  - id: each
    kind: http
    needs: [pick]
    map: {over: "{{ steps.pick.output }}", as: story}
    when: "steps.pick.output|length > 0"
    with:
      url: "https://hacker-news.firebaseio.com/v0/item/{{ story }}.json?i={{ index }}"
      headers: {Authorization: "Bearer {{ secrets.hn_token }}", X-Run: "{{ run.id }}"}
  - id: summary
    kind: transform
    needs: [each]
    with: {value: "{{ steps.top.output.json|length }} stories: {{ steps.each.output|map(attribute='json')|list }}"}
    on_error: report
  - id: report
    kind: transform
    with: {value: "{% for s in inputs.extra|default([]) %}{{ s }}{% endfor %}"}
"""


def test_a_good_workflow_has_no_problems() -> None:
    assert found(GOOD.replace("inputs.extra", "inputs.count")) == []
    wf_, problems = parse_and_validate(GOOD.replace("inputs.extra", "inputs.count"), kinds=KINDS)
    assert isinstance(wf_, Workflow) and problems == []
    assert check_spec(GOOD.replace("inputs.extra", "inputs.count"), kinds=KINDS).name == "hn-digest"


def test_accepts_a_workflow_object_data_or_text() -> None:
    data = wf(step("a", with_={"value": 1}))
    for spec in (data, json.dumps(data), Workflow.model_validate(data)):
        assert found(spec) == []


# --- ids and needs ------------------------------------------------------------------------


def test_duplicate_ids() -> None:
    assert one(wf(step("a"), step("b"), step("a")), "steps[2].id")[:3] == (
        "steps[2].id",
        "duplicate step id 'a' (steps[0] has it too)",
        "step ids must be unique; rename one of them",
    )


def test_unknown_needs_suggest_the_nearest_id() -> None:
    _, message, hint, _ = one(wf(step("fetch"), step("b", needs=["fetch", "fecth"])), "steps[1].needs[1]")
    assert message == "needs an unknown step 'fecth'"
    assert hint.startswith("did you mean 'fetch'?")


def test_a_step_needing_itself() -> None:
    assert one(wf(step("a", needs=["a"])), "steps[0].needs[0]")[1] == "step 'a' needs itself"


def test_cycles_are_named() -> None:
    spec = wf(step("a", needs=["c"]), step("b", needs=["a"]), step("c", needs=["b"]), step("d", needs=["a"]))
    (problem,) = found(spec)
    assert problem[0] == "steps[0].needs"
    assert problem[1] == "needs form a cycle: a → c → b → a"
    two = wf(step("a", needs=["b"]), step("b", needs=["a"]), step("x", needs=["y"]), step("y", needs=["x"]))
    assert [p[1] for p in found(two)] == ["needs form a cycle: a → b → a", "needs form a cycle: x → y → x"]


def test_long_chains_are_fine() -> None:
    chain = wf(step("s0"), *[step(f"s{i}", needs=[f"s{i - 1}"]) for i in range(1, 3000)])
    chain["steps"][-1]["with"] = {"value": "{{ steps.s0.output }}"}
    assert found(chain) == []


def test_no_steps() -> None:
    assert found(wf()) == [("steps", "the workflow has no steps", found(wf())[0][2], "error")]
    assert "add at least one" in found({"name": "t"})[0][2]


# --- kinds and their config ----------------------------------------------------------------


def test_unknown_kind_suggests_the_nearest() -> None:
    _, message, hint, _ = one(wf(step("a", "htp")), "steps[0].kind")
    assert message == "unknown step kind 'htp'"
    assert hint == "did you mean 'http'? known kinds: broken, http, picky, transform"


def test_kinds_are_skipped_without_a_registry() -> None:
    assert validate_spec(wf(step("a", "whatever", with_={"x": 1}))) == []


def test_config_errors_have_paths_inside_with() -> None:
    spec = wf(
        step(
            "a",
            "http",
            with_={
                "method": "PUT",
                "timeout": "soon",
                "retry": {"times": "x"},
                "bogus": 1,
                "headers": {"k": 5},
            },
        ),
    )
    problems = {p[0]: p for p in found(spec)}
    assert set(problems) == {
        "steps[0].with.url",
        "steps[0].with.method",
        "steps[0].with.timeout",
        "steps[0].with.retry.times",
        "steps[0].with.bogus",
        "steps[0].with.headers.k",
    }
    assert problems["steps[0].with.url"][1] == "'url' is required"
    assert problems["steps[0].with.bogus"][1] == "unknown field 'bogus'"
    assert "allowed fields: url, method, timeout, headers, retry" in problems["steps[0].with.bogus"][2]
    assert "'GET' or 'POST'" in problems["steps[0].with.method"][1]
    assert (
        "did you mean 'times'?"
        in one(
            wf(step("a", "http", with_={"url": "https://x", "retry": {"time": 1}})),
            "steps[0].with.retry.time",
        )[2]
    )


def test_template_values_are_not_type_checked_but_fields_still_are() -> None:
    spec = wf(
        step(
            "a",
            "http",
            with_={
                "url": "https://x",
                "timeout": "{{ 5 }}",
                "method": "{{ 'GET' }}",
                "headers": "{{ {'a': 'b'} }}",
                "retry": {"times": "{% if 1 %}3{% endif %}"},
            },
        ),
        step("b", "http", with_={"timeout": "{{ 5 }}", "extra": "{{ 1 }}"}),
    )
    assert paths(spec) == ["steps[1].with.url", "steps[1].with.extra"]


def test_model_level_config_errors() -> None:
    assert one(wf(step("a", "picky", with_={"a": 1, "b": 2})), "steps[0].with")[1] == "give a or b, not both"


def test_a_kinds_own_check() -> None:
    assert one(wf(step("a", "http", with_={"url": "http://x"})), "steps[0].with.url")[1:3] == (
        "plain http is not allowed",
        "use https://",
    )
    assert "own check failed: boom" in one(wf(step("a", "broken")), "steps[0].with")[1]


# --- templates --------------------------------------------------------------------------------


def test_template_syntax_errors() -> None:
    spec = wf(step("a", with_={"value": {"deep": ["ok", "{{ x"]}}, when="{{ 1 +"))
    assert paths(spec) == ["steps[0].with.value.deep[1]", "steps[0].when"]
    assert (
        "unknown filter 'attr'"
        in one(wf(step("a", with_={"value": "{{ 1|attr('x') }}"})), "steps[0].with.value")[1]
    )


def test_reading_a_step_that_is_not_upstream() -> None:
    spec = wf(step("a"), step("b", needs=["c"], with_={"value": "{{ steps.a.output }}"}), step("c"))
    _, message, hint, _ = one(spec, "steps[1].with.value")
    assert message == "step 'b' reads steps.a but does not need it, so it may run before 'a'"
    assert hint == "add it to needs: [c, a]"
    typo = wf(step("a"), step("b", needs=["ghost"], with_={"value": "{{ steps.a.output }}"}))
    assert [p[2] for p in found(typo) if p[0] == "steps[1].with.value"] == ["add it to needs: [a]"]


def test_upstream_is_transitive() -> None:
    spec = wf(
        step("a"),
        step("b", needs=["a"]),
        step("c", needs=["b"], with_={"value": "{{ steps.a.output }}"}),
    )
    assert found(spec) == []


def test_reading_a_step_that_does_not_exist_or_itself() -> None:
    spec = wf(step("fetch"), step("b", needs=["fetch"], with_={"value": "{{ steps.fecth.output }}"}))
    _, message, hint, _ = one(spec, "steps[1].with.value")
    assert message == "there is no step 'fecth'" and hint.startswith("did you mean 'fetch'?")
    assert one(wf(step("a", with_={"value": "{{ steps.a.output }}"})), "steps[0].with.value")[1] == (
        "step 'a' reads its own output"
    )


def test_inputs_must_be_declared() -> None:
    spec = wf(step("a", with_={"value": "{{ inputs.cnt }}"}), inputs={"count": 1})
    problems = found(spec)
    assert problems[0][:2] == ("steps[0].with.value", "input 'cnt' is not declared")
    assert problems[0][2].startswith("did you mean 'count'?")
    assert problems[1] == (
        "inputs.count",
        "input 'count' is never used",
        "use it in a template as {{ inputs.count }}, or remove it",
        "warning",
    )


def test_the_map_alias() -> None:
    assert one(wf(step("a", with_={"value": "{{ item }}"})), "steps[0].with.value")[1] == (
        "'item' is only defined in a step with map:"
    )
    assert found(wf(step("a", map=[1, 2], when="item > 1", with_={"value": "{{ item }} {{ index }}"}))) == []
    renamed = wf(step("a", map={"over": [1], "as": "row"}, with_={"value": "{{ item }}{{ row }}"}))
    assert one(renamed, "steps[0].with.value")[1:3] == (
        "unknown name 'item'",
        "this step names its items 'row' (map.as)",
    )
    in_over = wf(step("a", map="{{ item }}"))
    assert one(in_over, "steps[0].map.over")[1] == "'item' is not defined in map.over"


def test_map_over_must_be_a_list_or_a_template() -> None:
    assert "must be a list" in one(wf(step("a", map="items")), "steps[0].map.over")[1]
    assert "that name is taken" in one(wf(step("a", map={"over": [1], "as": "steps"})), "steps[0].map.as")[1]


def test_unknown_names_in_templates() -> None:
    spec = wf(step("a", with_={"value": "{{ input.count }} {{ run.id }} {{ secrets.anything }}"}))
    _, message, hint, _ = one(spec, "steps[0].with.value")
    assert message == "unknown name 'input'"
    assert hint == "did you mean 'inputs'? templates can use inputs, steps, secrets, run"


def test_names_a_template_binds_itself_are_fine() -> None:
    value = "{% for row in steps.a.output %}{% set n = row.x %}{{ n }}{{ loop.index }}{% endfor %}"
    assert found(wf(step("a"), step("b", needs=["a"], with_={"value": value}))) == []


def test_when_is_checked_too() -> None:
    spec = wf(step("a"), step("b", when="steps.a.output.ok and inputs.go"))
    assert [p[1] for p in found(spec)] == [
        "input 'go' is not declared",
        "step 'b' reads steps.a but does not need it, so it may run before 'a'",
    ]
    warning = found(wf(step("a", when="{{ 1 }} and {{ 2 }}")))
    assert warning[0][0] == "steps[0].when" and warning[0][3] == "warning"


# --- on_error, trigger, inputs ----------------------------------------------------------------


def test_an_error_handler_may_read_the_step_that_failed() -> None:
    spec = wf(
        step("a", on_error="alert"),
        step("b", needs=["a"]),
        step("alert", with_={"value": "{{ steps.a.error.message }}"}),
    )
    assert found(spec) == []


def test_on_error() -> None:
    assert (
        found(wf(step("a", on_error="fail"), step("b", on_error="continue"), step("c", on_error="a"))) == []
    )
    assert one(wf(step("a", on_error="a")), "steps[0].on_error")[1] == "step 'a' cannot handle its own errors"
    _, message, hint, _ = one(wf(step("a", on_error="contineu")), "steps[0].on_error")
    assert message == "on_error must be fail, continue or a step id, not 'contineu'"
    assert hint.startswith("did you mean 'continue'?")


@pytest.mark.parametrize("cron", ["61 * * * *", "bad", "* * * *", "0 9 * * 1-5 2024", "", "@every 5m"])
def test_bad_cron(cron: str) -> None:
    _, message, hint, _ = one(wf(step("a"), trigger={"schedule": {"cron": cron}}), "trigger.schedule.cron")
    assert message.startswith("invalid cron expression") and "'0 9 * * 1-5'" in hint


@pytest.mark.parametrize("cron", ["0 9 * * 1-5", "*/5 * * * *", "@daily", "0 9 * * mon-fri"])
def test_good_cron(cron: str) -> None:
    assert found(wf(step("a"), trigger={"schedule": {"cron": cron, "timezone": "America/New_York"}})) == []


@pytest.mark.parametrize(
    ("tz", "hint"),
    [
        ("Europe/Pariss", "did you mean 'Europe/Paris'?"),
        ("europe/paris", "did you mean 'Europe/Paris'?"),
        ("../../etc/passwd", "IANA name"),
        ("Nowhere/Special", "IANA name"),
    ],
)
def test_bad_timezone(tz: str, hint: str) -> None:
    spec = wf(step("a"), trigger={"schedule": {"cron": "0 9 * * *", "timezone": tz}})
    _, message, got_hint, _ = one(spec, "trigger.schedule.timezone")
    assert message.startswith("unknown timezone") and hint in got_hint


def test_webhook_respond_must_name_a_step() -> None:
    assert found(wf(step("a"), trigger={"webhook": {"respond": "a"}})) == []
    _, message, hint, _ = one(
        wf(step("answer"), trigger={"webhook": {"respond": "anser"}}), "trigger.webhook.respond"
    )
    assert message == "there is no step 'anser' to respond with" and "did you mean 'answer'?" in hint


def test_inputs_read_wholesale_count_as_used() -> None:
    assert found(wf(step("a", with_={"value": "{{ inputs }}"}), inputs={"x": 1, "y": 2})) == []


# --- all at once --------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_even_with_structural_errors() -> None:
    text = """
name: Bad Name
trigger: {schedule: {cron: "nope", timezone: Mars/Base}}
inputs: {count: 1, unused: {type: strin}}
steps:
  - {id: fetch, kind: htp, retries: -1}
  - {id: pick, kind: transform, needs: [fetch, ghost], with: {value: "{{ steps.summary.output }} {{ inputs.cnt }}"}}
  - {id: 9bad, kind: transform}
  - {id: summary, kind: transform, needs: [pick], with: {value: "{{ steps.pick.output }}", oops: 1}, on_error: nobody}
  - {id: pick, kind: transform}
"""
    problems = found(text)
    assert [p[0] for p in problems] == [
        "name",
        "inputs.unused.type",
        "steps[0].retries.count",
        "steps[2].id",
        "steps[4].id",
        "steps[1].needs[1]",
        "steps[0].kind",
        "steps[3].with.oops",
        "steps[1].with.value",
        "steps[1].with.value",
        "steps[3].on_error",
        "trigger.schedule.cron",
        "trigger.schedule.timezone",
        "inputs.count",
    ]
    assert all(p[1] for p in problems) and all(p[2] for p in problems)
    wf_, _ = parse_and_validate(text, kinds=KINDS)
    assert wf_ is None


def test_check_spec_raises_with_every_problem() -> None:
    with pytest.raises(SpecError) as e:
        check_spec(wf(step("a", needs=["b"]), step("a")), kinds=KINDS)
    assert len(e.value.problems) == 2
    assert "steps[1].id: duplicate step id 'a'" in str(e.value)
    warned = check_spec(wf(step("a"), inputs={"x": 1}), kinds=KINDS)  # warnings do not stop it
    assert warned.name == "t"
    with pytest.raises(SpecError, match="empty"):
        check_spec("")


def test_extra_checks() -> None:
    def no_http(w: Workflow) -> list[Problem]:
        return [
            Problem(f"steps[{i}]", "no http here", "use transform")
            for i, s in enumerate(w.steps)
            if s.kind == "http"
        ]

    def broken(w: Workflow) -> list[Problem]:
        raise ValueError("bad check")

    spec = wf(step("a", "http", with_={"url": "https://x"}))
    assert found(spec, extra_checks=[no_http]) == [("steps[0]", "no http here", "use transform", "error")]
    assert "the check broken failed: bad check" in found(spec, extra_checks=[broken])[0][1]


def test_problem_to_json() -> None:
    p = Problem("steps[0].id", "bad", "fix it", "warning")
    assert p.to_json() == {"path": "steps[0].id", "message": "bad", "hint": "fix it", "severity": "warning"}
    assert str(p) == "steps[0].id: bad (fix it)"
    assert Problem("x", "m").severity == "error"


@pytest.mark.parametrize(
    "spec", [None, 5, [], "[1]", "name: [", "steps: 5", {"name": "x", "steps": "nope"}, "\x00"]
)
def test_garbage_gives_problems(spec: Any) -> None:
    wf_, problems = parse_and_validate(spec, kinds=KINDS)
    assert wf_ is None and problems
    assert not any(p.message.startswith("internal error while validating") for p in problems)


# --- the flows wrapper and the layer rule ------------------------------------------------------


def test_the_flows_wrapper_uses_the_registry() -> None:
    from velocitymesh.flows.steps import kinds
    from velocitymesh.flows.validation import check_workflow, validate_text, validate_workflow

    assert "http" in kinds()
    problems = validate_workflow(wf(step("a", "htp")))
    assert problems[0].path == "steps[0].kind" and "did you mean 'http'?" in problems[0].hint
    assert validate_text("name: [") and validate_text("name: [")[0].message.startswith("invalid YAML")
    with pytest.raises(SpecError):
        check_workflow(wf(step("a", "htp")))


def test_workspace_validation_does_not_import_flows() -> None:
    code = (
        "import sys, velocitymesh.workspace.validate as v; v.validate_spec('name: a'); "
        "print(any(m.startswith('velocitymesh.flows') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- never a traceback --------------------------------------------------------------------------

json_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)
ids = st.sampled_from(["a", "b", "c", "fetch", "x"])
templ = st.sampled_from(
    [
        "{{ steps.a.output }}",
        "{{ inputs.n }}",
        "{{ item }}",
        "{{ x",
        "{{ steps.zz.y }}",
        "v",
        "{% for r in steps.b.output %}{{ r }}{% endfor %}",
        "{{ secrets.k|upper }}",
        "{{ foo }}",
    ]
)
fuzz_steps = st.lists(
    st.fixed_dictionaries(
        {"id": ids | json_data, "kind": st.sampled_from([*KINDS, "nope"]) | json_data},
        optional={
            "with": st.dictionaries(
                st.sampled_from(["url", "value", "timeout", "x"]), templ | json_data, max_size=3
            )
            | json_data,
            "needs": st.lists(ids, max_size=3) | json_data,
            "when": templ | json_data,
            "map": templ | st.lists(json_data, max_size=2) | json_data,
            "on_error": ids | st.sampled_from(["fail", "continue"]) | json_data,
            "retries": json_data,
        },
    ),
    max_size=5,
)
fuzz_docs = st.fixed_dictionaries(
    {"name": st.sampled_from(["ok", "Bad"]) | json_data},
    optional={
        "steps": fuzz_steps | json_data,
        "inputs": st.dictionaries(st.sampled_from(["n", "m"]), json_data, max_size=2) | json_data,
        "trigger": json_data
        | st.fixed_dictionaries(
            {
                "schedule": st.fixed_dictionaries(
                    {"cron": st.text(max_size=15) | json_data},
                    optional={"timezone": st.text(max_size=15) | json_data},
                )
            }
        ),
        "extra": json_data,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_docs | json_data)
def test_any_data_gives_problems_never_a_traceback(data: Any) -> None:
    for spec in (data, json.dumps(data)):
        wf_, problems = parse_and_validate(spec, kinds=KINDS)
        assert all(isinstance(p, Problem) and p.path is not None and p.message for p in problems)
        assert not any(p.message.startswith("internal error while validating") for p in problems), problems
        if wf_ is None:
            assert any(p.severity == "error" for p in problems)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_problems_never_a_traceback(text: str) -> None:
    _, problems = parse_and_validate(text, kinds=KINDS)
    assert not any(p.message.startswith("internal error while validating") for p in problems)
