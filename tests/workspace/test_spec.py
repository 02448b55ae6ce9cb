"""The spec models and their YAML form: load, dump, round trip, and clear errors for any text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from velocitymesh.errors import NotFoundError, SpecError, UsageError
from velocitymesh.workspace.spec import Workflow, workflow_json_schema
from velocitymesh.workspace.yamlio import dump_workflow, load_data, load_workflow_file, load_workflow_text

DESIGN_EXAMPLE = """\
name: hn-digest                      # slug, unique in a workspace
description: Summarise the top Hacker News stories every weekday morning
trigger:
  schedule: {cron: "0 9 * * 1-5", timezone: Europe/Paris}   # or webhook: {...} / manual
inputs:
  count: {type: integer, default: 5}
steps:
  - id: top
    kind: http
    with: {url: "https://hacker-news.firebaseio.com/v0/topstories.json"}
  - id: pick
    kind: python
    needs: [top]
    with:
      code: |
        def main(ids, count):
            return ids[:count]
      args: {ids: "{{ steps.top.output.json }}", count: "{{ inputs.count }}"}
  - id: summary
    kind: llm
    needs: [pick]
    with:
      model: anthropic:claude-sonnet-4-5     # provider:model
      prompt: "Summarise these story ids for a busy engineer: {{ steps.pick.output }}"
    retries: 2
    timeout: 60
    budget: {usd: 0.05}
  - id: store
    kind: sql
    needs: [summary]
    with: {query: "insert into digests values (now(), $summary)", params: {summary: "{{ steps.summary.output.text }}"}}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        load_workflow_text(text)
    return [f"{p.path}|{p.message}|{p.hint}" for p in e.value.problems]


# --- loading ------------------------------------------------------------------------------------


def test_the_design_example_loads() -> None:
    wf = load_workflow_text(DESIGN_EXAMPLE)
    assert wf.name == "hn-digest"
    assert wf.trigger.schedule is not None and wf.trigger.schedule.timezone == "Europe/Paris"
    assert wf.inputs["count"].default == 5
    assert [s.id for s in wf.steps] == ["top", "pick", "summary", "store"]
    pick = wf.step("pick")
    assert pick.with_["code"].endswith("return ids[:count]\n")
    assert pick.needs == ["top"]
    summary = wf.step("summary")
    assert summary.retries.count == 2 and summary.timeout == 60
    assert summary.budget is not None and summary.budget.usd == 0.05


def test_shorthands() -> None:
    wf = load_workflow_text(
        """
name: s
trigger: manual
inputs: {count: 5, name: bob, ratio: 0.5, flag: true, ids: [1], cfg: {type: object, default: {a: 1}}}
steps:
  - {id: a, kind: transform, needs: b, retries: 3, cache: true, map: "{{ inputs.ids }}"}
  - {id: b, kind: transform, cache: false, map: [1, 2]}
"""
    )
    assert wf.trigger.is_manual
    assert {k: v.type for k, v in wf.inputs.items()} == {
        "count": "integer",
        "name": "string",
        "ratio": "number",
        "flag": "boolean",
        "ids": "array",
        "cfg": "object",
    }
    a, b = wf.steps
    assert a.needs == ["b"] and a.retries.count == 3 and a.cache is not None and a.cache.enabled
    assert a.map is not None and a.map.over == "{{ inputs.ids }}" and a.map.as_ == "item"
    assert b.cache is not None and not b.cache.enabled and b.map is not None and b.map.over == [1, 2]
    assert load_workflow_text(dump_workflow(wf)) == wf


def test_yaml_12_scalars_mean_what_they_look_like() -> None:
    data = load_data(
        "a: yes\nb: on\nc: 2024-01-01\nd: 1:30\ne: 1e3\nf: 0o17\ng: 0x1F\n"
        "h: 012\ni: x\nj: ~\nk: True\nl: '5'\nm: 1_000\n"
    )
    assert data == {
        "a": "yes",
        "b": "on",
        "c": "2024-01-01",
        "d": "1:30",
        "e": 1000.0,
        "f": 15,
        "g": 31,
        "h": 12,
        "i": "x",
        "j": None,
        "k": True,
        "l": "5",
        "m": "1_000",
    }


def test_json_text_is_accepted() -> None:
    wf = load_workflow_text(
        json.dumps({"name": "j", "steps": [{"id": "a", "kind": "x", "with": {"n": 1e3}}]})
    )
    assert wf.steps[0].with_ == {"n": 1000.0}


def test_yaml_extras_become_plain_data() -> None:
    assert load_data("a: &x {k: 1}\nb: *x\nc: {<<: *x, j: 2}") == {
        "a": {"k": 1},
        "b": {"k": 1},
        "c": {"k": 1, "j": 2},
    }
    assert load_data("t: !!timestamp 2024-01-01T10:00:00Z") == {"t": "2024-01-01T10:00:00+00:00"}
    assert load_data("s: !!set {b, a}") == {"s": ["a", "b"]}
    assert load_data("{1: a, null: b, 2.5: c}") == {"1": "a", "null": "b", "2.5": "c"}
    assert load_data("\ufeffa: 1") == {"a": 1}


# --- clear errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\nsteps: [{id: x, kind: http, with: {url: {{ x }} }}]", "line 2, column"),
        ("name: a\nsteps:\n  - id: x\n   kind: y\n", "line 4, column"),
        ("a: 1\n\tb: 2", "tabs"),
        ("a: b: c", "line 1, column 5"),
        ("a: [1, 2", "line 2, column 1"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("x: !!python/object/apply:os.system [id]", "remove the !!tag"),
        ("x: !!binary aGVsbG8=", "binary values"),
        ("x: .inf", "JSON cannot hold"),
        ('{"x": 1e999}', "JSON cannot hold"),
        ("x: .nan", "JSON cannot hold"),
        ("a: &a [*a]", "contains itself"),
        ("x: 1" + "0" * 5000, "too long"),
        ("\x00", "character 1"),
        ("[" * 2000 + "]" * 2000, "nested"),
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("[1, 2]", "must be a mapping"),
        ("just text", "must be a mapping"),
    ],
)
def test_malformed_documents_get_a_clear_message(text: str, expected: str) -> None:
    problems = problems_of(text)
    assert any(expected in p for p in problems), problems


def test_template_quoting_hint() -> None:
    (problem,) = problems_of("name: a\nsteps: [{id: x, kind: http, with: {url: {{ x }} }}]")
    assert 'put templates in quotes: url: "{{' in problem


def test_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(SpecError, match="aliases"):
        load_workflow_text("\n".join(lines))


def test_structural_errors_have_paths_and_hints() -> None:
    problems = problems_of(
        """
name: Not A Slug
trigger: {schedule: {crn: "0 9 * * *"}}
inputs: {n: {type: int}}
steps:
  - {id: a, kind: x}
  - {id: b, kind: x, retries: -1}
  - {id: 1c, kind: x, with: 5, wth: {}, map: {over: [1], as: "bad name"}}
  - just a string
  - {kind: x}
"""
    )
    paths = {p.split("|")[0] for p in problems}
    assert paths == {
        "name",
        "trigger.schedule.cron",
        "trigger.schedule.crn",
        "inputs.n.type",
        "steps[1].retries.count",
        "steps[2].id",
        "steps[2].with",
        "steps[2].wth",
        "steps[2].map.as",
        "steps[3]",
        "steps[4].id",
    }
    by_path = {p.split("|")[0]: p for p in problems}
    assert "did you mean 'with'?" in by_path["steps[2].wth"]
    assert "did you mean 'cron'?" in by_path["trigger.schedule.crn"]
    assert "'cron' is required" in by_path["trigger.schedule.cron"]
    assert "lowercase" in by_path["name"]
    assert "'string', 'integer'" in by_path["inputs.n.type"]


def test_spec_error_message_lists_problems() -> None:
    with pytest.raises(SpecError) as e:
        load_workflow_text("name: A\nsteps: [{id: a, kind: x, wth: 1}]")
    assert "name: invalid name 'A'" in str(e.value) and "steps[0].wth" in str(e.value)
    with pytest.raises(SpecError) as e:
        load_workflow_text("")
    assert str(e.value).startswith("the document is empty")


def test_load_workflow_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(DESIGN_EXAMPLE, encoding="utf-8")
    assert load_workflow_file(good).name == "hn-digest"
    assert load_workflow_file(str(good)).name == "hn-digest"
    with pytest.raises(NotFoundError, match="no workflow file"):
        load_workflow_file(tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="folder"):
        load_workflow_file(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: a\ndescription: caf\xe9\n")
    with pytest.raises(SpecError, match=r"not UTF-8 text .*line 2"):
        load_workflow_file(latin)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\nsteps: [", encoding="utf-8")
    with pytest.raises(SpecError, match=r"bad\.yaml"):
        load_workflow_file(bad)


# --- writing and round trips --------------------------------------------------------------------


def test_dump_is_short_ordered_and_readable() -> None:
    wf = load_workflow_text(DESIGN_EXAMPLE)
    text = dump_workflow(wf)
    assert text.startswith("name: hn-digest\ndescription:")
    assert "    code: |\n      def main(ids, count):\n          return ids[:count]\n" in text
    assert "retries: 2\n" in text and "needs:\n  - top" in text.replace("  - top", "  - top")
    assert "on_error" not in text and "concurrency" not in text  # defaults left out
    assert load_workflow_text(text) == wf


def test_dump_keeps_unicode_and_quotes_what_would_read_back_differently() -> None:
    wf = Workflow.model_validate(
        {
            "name": "u",
            "description": "café ✓ 日本",
            "steps": [
                {
                    "id": "a",
                    "kind": "x",
                    "with": {
                        "yes": "yes",
                        "on": "on",
                        "num": "1e3",
                        "date": "2024-01-01",
                        "null": "null",
                        "octal": "0o17",
                        "true": "True",
                        "empty": "",
                        "spaces": "  lead",
                        "trail": "x\n\n",
                        "tab": "a\tb",
                        "crlf": "a\r\nb",
                        "colon": "a: b",
                        "hash": "# x",
                        "tmpl": "{{ x }}",
                        "multi": "line 1\n  line 2\n",
                        "nel": "a\x85b",
                        "ls": "a\u2028b\nc",
                        "bom": "\ufeffx",
                        "ctrl": "\x00\x07\x1b",
                    },
                }
            ],
        }
    )
    text = dump_workflow(wf)
    assert "café ✓ 日本" in text
    assert load_workflow_text(text) == wf


def test_json_schema_uses_the_names_people_write() -> None:
    schema = workflow_json_schema()
    step = schema["$defs"]["Step"]["properties"]
    assert "with" in step and "with_" not in step
    assert schema["title"] == "VelocityMesh workflow"


slug = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
scalars = (
    # Not inf/NaN: JSON cannot hold them (the loader refuses them, to_data() writes null).
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_data = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=15,
)
steps = st.lists(
    st.fixed_dictionaries(
        {"id": ident, "kind": ident},
        optional={
            "with": st.dictionaries(st.text(max_size=10), json_data, max_size=4),
            "needs": st.lists(ident, max_size=3) | ident,
            "when": st.text(max_size=20),
            # map.over is a list or a template string (a mapping would not survive the short form).
            "map": st.text(max_size=20)
            | st.lists(json_data, max_size=3)
            | st.fixed_dictionaries(
                {"over": st.text(max_size=10)}, optional={"concurrency": st.integers(1, 50)}
            ),
            "retries": st.integers(0, 100)
            | st.fixed_dictionaries({}, optional={"count": st.integers(0, 5), "backoff": st.floats(0, 10)}),
            "timeout": st.floats(0.001, 1e6),
            "cache": st.booleans() | st.fixed_dictionaries({"ttl": st.floats(1, 100)}),
            "budget": st.fixed_dictionaries(
                {}, optional={"usd": st.floats(0, 10), "tokens": st.integers(0, 10**6)}
            ),
            "on_error": st.sampled_from(["fail", "continue"]) | ident,
            "description": st.text(max_size=40),
        },
    ),
    max_size=4,
)
workflows = st.fixed_dictionaries(
    {"name": slug},
    optional={
        "description": st.text(max_size=80),
        "trigger": st.just("manual")
        | st.fixed_dictionaries({"schedule": st.fixed_dictionaries({"cron": st.text(max_size=20)})})
        | st.fixed_dictionaries({"webhook": st.fixed_dictionaries({}, optional={"respond": ident})}),
        "inputs": st.dictionaries(ident, scalars | st.lists(scalars, max_size=3), max_size=3),
        "steps": steps,
        "concurrency": st.integers(1, 1000),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows)
def test_round_trip(data: dict[str, Any]) -> None:
    wf = Workflow.model_validate(data)
    text = dump_workflow(wf)
    again = load_workflow_text(text)
    assert again == wf
    assert again.content_hash() == wf.content_hash()
    assert dump_workflow(again) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_workflow_or_a_spec_error(text: str) -> None:
    try:
        assert isinstance(load_workflow_text(text), Workflow)
    except SpecError as e:
        assert e.problems and all(p.message for p in e.problems)


yamlish = st.lists(
    st.sampled_from(
        [
            "name",
            ":",
            " ",
            "\n",
            "  ",
            "- ",
            "steps",
            "id",
            "kind",
            "with",
            "{",
            "}",
            "[",
            "]",
            ",",
            "'",
            '"',
            "&a",
            "*a",
            "!!",
            "{{",
            "}}",
            "a",
            "1",
            "x",
            "#",
            "|",
            ">",
            "needs",
            "?",
            "\t",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(yamlish)
def test_yaml_like_text_gives_a_workflow_or_a_spec_error(text: str) -> None:
    try:
        load_workflow_text(text)
    except SpecError as e:
        assert e.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    json_data | workflows | st.fixed_dictionaries({"name": slug, "steps": st.lists(json_data, max_size=3)})
)
def test_any_json_gives_a_workflow_or_a_spec_error(data: Any) -> None:
    try:
        load_workflow_text(json.dumps(data))
    except SpecError as e:
        assert e.problems
