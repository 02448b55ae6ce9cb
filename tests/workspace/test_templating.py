"""Templates: native JSON values, strings, clear errors, the sandbox, bounded work."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from velocitymesh.errors import TemplateError
from velocitymesh.workspace import template_sandbox
from velocitymesh.workspace.templating import (
    FILTERS,
    ensure_plain,
    evaluate,
    expression_template,
    is_expression,
    iter_templates,
    references,
    render,
    template_errors,
)


def ctx(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "inputs": {"count": 3, "name": "bob", "flag": True, "ratio": 0.5, "none": None},
        "steps": {
            "fetch": {
                "output": {
                    "json": [3, 1, 2],
                    "items": [{"title": "a", "n": 2}, {"title": "b", "n": 5}],
                    "body": "{{ secrets.token }}",
                },
                "status": "succeeded",
                "error": None,
            }
        },
        "secrets": {"token": "s3cr3t"},
        "run": {"id": "r1", "workflow": "wf", "version": 1},
    }
    base.update(extra)
    return base


# --- values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ inputs.count }}", 3),
        ("  {{ inputs.count }}\n", 3),
        ("{{- inputs.count -}}", 3),
        ("{{ inputs.ratio }}", 0.5),
        ("{{ inputs.flag }}", True),
        ("{{ inputs.none }}", None),
        ("{{ steps.fetch.output.json }}", [3, 1, 2]),
        ("{{ steps.fetch.output.items[1] }}", {"title": "b", "n": 5}),
        ("{{ steps['fetch'].output['json'][0] }}", 3),
        ("{{ steps.fetch.output.json[1:] }}", [1, 2]),
        ("{{ inputs.count * 2 + 1 }}", 7),
        ("{{ inputs.count > 2 }}", True),
        ("{{ [1, 2] + [3] }}", [1, 2, 3]),
        ("{{ (1, 'a') }}", [1, "a"]),
        ("{{ {'a': inputs.count} }}", {"a": 3}),
        ("{{ '}}' }}", "}}"),
        ("{{ inputs.name ~ '!' }}", "bob!"),
        ("{{ inputs.missing|default(7) }}", 7),
        ("{{ inputs.missing is defined }}", False),
        ("{{ steps.fetch.output.json|sort }}", [1, 2, 3]),
        ("{{ steps.fetch.output.items|map(attribute='title')|list }}", ["a", "b"]),
        ("{{ steps.fetch.output.items|selectattr('n', 'gt', 3)|list }}", [{"title": "b", "n": 5}]),
        ("{{ steps.fetch.output.items|sum(attribute='n') }}", 7),
        ("{{ steps.fetch.output.items|sort(attribute='n', reverse=true)|first }}", {"title": "b", "n": 5}),
        ("{{ inputs|dictsort|first }}", ["count", 3]),
        ("{{ {'b': 1, 'a': 2}|items|list }}", [["b", 1], ["a", 2]]),
        ("{{ steps.fetch.output.json|batch(2)|list }}", [[3, 1], [2]]),
        ("{{ steps.fetch.output.json|reverse|list }}", [2, 1, 3]),
        ("{{ steps.fetch.output.json|unique|list|length }}", 3),
        ("{{ '[1, {\"a\": 2}]'|fromjson }}", [1, {"a": 2}]),
        ("{{ inputs.name|upper|replace('B', 'R', 1) }}", "ROB"),
        ("{{ steps.fetch.output.json|select('odd')|list }}", [3, 1]),
    ],
)
def test_a_single_expression_keeps_its_json_type(template: str, expected: Any) -> None:
    assert render(template, ctx()) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("n={{ inputs.count }}", "n=3"),
        ("{{ inputs.count }} and {{ inputs.name }}", "3 and bob"),
        ("ids: {{ steps.fetch.output.json }}", "ids: [3, 1, 2]"),
        ("{{ inputs.flag }} {{ inputs.none }}!", "true null!"),
        ("item: {{ steps.fetch.output.items[0] }}", 'item: {"title": "a", "n": 2}'),
        ("{% for x in steps.fetch.output.json %}{{ loop.index }}:{{ x }} {% endfor %}", "1:3 2:1 3:2 "),
        ("{% if inputs.count > 2 %}big{% else %}small{% endif %}", "big"),
        ("{% set n = inputs.count %}{{ n * 2 }}!", "6!"),
        ("{{ steps.fetch.output.json|join(', ') }}.", "3, 1, 2."),
        (
            "json: {{ steps.fetch.output.items|tojson }}",
            'json: [{"title": "a", "n": 2}, {"title": "b", "n": 5}]',
        ),
        ("{{ steps.fetch.output.items|tojson }} ", '[{"title": "a", "n": 2}, {"title": "b", "n": 5}]'),
        ("{{ inputs.name|string }}-{{ 3|string }}", "bob-3"),
        ("def main():\n    return {{ inputs.count }}\n", "def main():\n    return 3\n"),
        ("{% raw %}{{ not rendered }}{% endraw %}", "{{ not rendered }}"),
    ],
)
def test_other_templates_render_to_text(template: str, expected: str) -> None:
    assert render(template, ctx()) == expected


def test_render_walks_dicts_and_lists_and_leaves_other_values_alone() -> None:
    value = {
        "url": "https://x/{{ inputs.name }}",
        "n": "{{ inputs.count }}",
        "list": [1, None, "{{ inputs.flag }}", {"deep": "{{ steps.fetch.output.json }}"}],
        "plain": "no template here",
        "comment": "{# only a comment #}",
        "num": 4.5,
    }
    assert render(value, ctx()) == {
        "url": "https://x/bob",
        "n": 3,
        "list": [1, None, True, {"deep": [3, 1, 2]}],
        "plain": "no template here",
        "comment": "{# only a comment #}",
        "num": 4.5,
    }
    assert render(None, ctx()) is None


def test_values_from_outside_are_never_rendered_again() -> None:
    c = ctx()
    assert render("{{ steps.fetch.output.body }}", c) == "{{ secrets.token }}"
    assert render("got: {{ steps.fetch.output.body }}", c) == "got: {{ secrets.token }}"
    c["inputs"]["evil"] = "{% for x in [1] %}{{ secrets.token }}{% endfor %}"
    assert render("{{ inputs.evil }}", c) == c["inputs"]["evil"]
    assert "s3cr3t" not in render("{{ [inputs.evil] }}", c)[0]


def test_evaluate_accepts_bare_expressions_and_braces() -> None:
    assert evaluate("inputs.count > 2", ctx()) is True
    assert evaluate("{{ inputs.count > 5 }}", ctx()) is False
    assert evaluate(" steps.fetch.status == 'succeeded' ", ctx()) is True
    assert evaluate("{{ inputs.count }} apples", ctx()) == "3 apples"
    assert expression_template("a > 1") == "{{ a > 1 }}"
    with pytest.raises(TemplateError):
        evaluate("inputs.count >", ctx())


def test_is_expression() -> None:
    assert is_expression("{{ a }}")
    assert is_expression(" {{ a + b }} ")
    assert not is_expression("{{ a }} {{ b }}")
    assert not is_expression("x {{ a }}")
    assert not is_expression("{% if a %}{{ a }}{% endif %}")


# --- errors say what is missing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ nope }}", "'nope' is undefined"),
        ("{{ inputs.cnt }}", "input 'cnt' was not given"),
        ("{{ steps.other.output }}", "there is no output of step 'other' here"),
        ("{{ steps.fetch.outptu }}", "steps.fetch has no 'outptu'"),
        ("{{ steps.fetch.output.jsn }}", "steps.fetch has no output field 'jsn'"),
        ("{{ steps.fetch.output.items[0].nope }}", "there is no field 'nope'"),
        ("{{ secrets.api_key }}", "secret 'api_key' is not set"),
        ("{{ run.nope }}", "run has no field 'nope'"),
        ("x {{ inputs.name.first }}", "inputs.name has no field 'first' (it is a string)"),
        ("{{ steps.fetch.output.json[10] }}", "out of range"),
        ("{{ 1 / 0 }}", "division by zero"),
        ("{{ x", "syntax error"),
        ("{% for %}", "syntax error"),
        ("{{ inputs.name|nosuchfilter }}", "unknown filter 'nosuchfilter'"),
        ("{% include 'other.html' %}", "cannot include"),
        ("{{ 'a' + 1 }}", "the template failed"),
    ],
)
def test_errors_name_what_is_wrong(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as e:
        render(template, ctx())
    assert message in str(e.value)


def test_missing_names_come_with_a_hint() -> None:
    with pytest.raises(TemplateError) as e:
        render("{{ inptus.count }}", ctx())
    assert "inputs, steps, secrets and run" in (e.value.hint or "")
    with pytest.raises(TemplateError) as e:
        render("{{ steps.fetch.output.jsn }}", ctx())
    assert "'json'" in (e.value.hint or "")


def test_errors_inside_a_structure_say_where() -> None:
    with pytest.raises(TemplateError) as e:
        render({"args": {"ids": "{{ nope }}"}, "h": ["{{ 1 }}", "{{ x|bad }}"]}, ctx())
    assert str(e.value).startswith("args.ids: ")
    with pytest.raises(TemplateError) as e:
        render({"h": ["{{ 1 }}", "{{ x|bad }}"]}, ctx())
    assert str(e.value).startswith("h[1]: ")


# --- the sandbox ----------------------------------------------------------------------------

ATTACKS = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''['__class__'] }}",
    "{{ inputs.name.__class__.__base__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ inputs|attr('__class__') }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ request }}",
    "{{ request.application.__globals__ }}",
    "{{ range(10**9)|list }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{{ 'a' * 10**9 }}",
    "{{ ['a'] * 10**9 }}",
    "{{ ('a' * 1000) * 10**6 }}",
    "{{ 10 ** 100000 }}",
    "{{ (10 ** 1000) ** 1000 }}",
    "{{ inputs.keys() }}",
    "{{ inputs.items() }}",
    "{{ steps.fetch.output.json.append(4) }}",
    "{{ steps.fetch.output.json.pop() }}",
    "{{ inputs.update({'a': 1}) }}",
    "{{ 'a'.upper() }}",
    "{{ (1).__class__ }}",
    "{{ (1).real }}",
    "{{ namespace() }}",
    "{% set ns = namespace(a=1) %}{{ ns.a }}",
    "{{ joiner() }}",
    "{{ dict(a=1) }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{0.__globals__}'.format_map(inputs) }}",
    "{{ '%s' % inputs }}",
    "{{ '%(a)s' % {'a': 1} }}",
    "{{ inputs.name|format(1) }}",
    "{{ steps.fetch.output.items|map(attribute='__class__')|list }}",
    "{{ steps.fetch.output.items|map(attribute='keys')|list }}",
    "{{ inputs|items|map(attribute='__class__')|list }}",
    "{{ steps.fetch.output.items|selectattr('__class__')|list }}",
    "{{ steps.fetch.output.items|groupby('n') }}",
    "{{ steps.fetch.output.items|sort(attribute='__class__') }}",
    "{% for x in steps.fetch.output.json %}{{ loop.cycle('a', 'b') }}{% endfor %}",
    "{% for x in steps.fetch.output.json recursive %}{{ loop([1]) }}{% endfor %}",
    "{% for x in steps.fetch.output.json %}{{ loop }}{% endfor %}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{% extends 'base.html' %}",
    "{% import 'x' as y %}",
    "{{ inputs.name|pprint }}",
    "{{ inputs.name|random }}",
    "{{ inputs.name|safe }}",
    "{{ inputs|xmlattr }}",
    "{{ inputs.name|center(10**9) }}",
    "{{ inputs.name|indent(10**9) }}",
    "{{ inputs.name|wordwrap(1) }}",
]


@pytest.mark.parametrize("template", ATTACKS)
def test_attacks_are_refused(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError) as e:
        render(template, ctx())
    assert time.monotonic() - started < 3
    text = str(e.value)
    assert "<class" not in text and "function" not in text.lower().replace("functions", "")
    assert "s3cr3t" not in text


def test_unsafe_access_says_why() -> None:
    with pytest.raises(TemplateError) as e:
        render("{{ ''.__class__ }}", ctx())
    assert "cannot read '__class__'" in str(e.value)
    with pytest.raises(TemplateError) as e:
        render("{{ inputs.keys() }}", ctx())
    assert "cannot call" in str(e.value) and "items" in str(e.value)
    with pytest.raises(TemplateError) as e:
        render("{{ '%s' % 1 }}", ctx())
    assert "'%' formatting" in str(e.value)


def test_no_globals_and_only_data_filters() -> None:
    assert template_sandbox.ENV.globals == {}
    for name in (
        "attr",
        "format",
        "groupby",
        "pprint",
        "random",
        "safe",
        "indent",
        "center",
        "xmlattr",
        "urlize",
    ):
        assert name not in FILTERS
    for name in ("map", "join", "default", "tojson", "sort", "items", "length", "upper"):
        assert name in FILTERS


def test_dict_keys_named_like_methods_are_just_keys() -> None:
    c = ctx(inputs={"items": [1], "keys": "k", "update": 0, "format": "f"})
    assert render("{{ inputs.items }}", c) == [1]
    assert render("{{ inputs.keys }}/{{ inputs.format }}", c) == "k/f"


def test_only_plain_data_is_reachable() -> None:
    class Leaky:
        secret = "leaked"

        def __repr__(self) -> str:
            return "LEAKED-REPR"

    c = ctx(run={"id": "r1", "obj": Leaky(), "nested": [{"o": Leaky()}]})
    assert render("{{ run.id }}", c) == "r1"  # the object is not reachable from here
    for template in (
        "{{ run.obj }}",
        "{{ run }}",
        "{{ run.obj.secret }}",
        "{{ run.nested }}",
        "{{ run|string }}",
        "{% for k in run %}{{ run[k] }}{% endfor %}",
        "x{{ run.nested[0].o }}",
    ):
        with pytest.raises(TemplateError) as e:
            render(template, c)
        assert "LEAKED" not in str(e.value) and "leaked" not in str(e.value)
    with pytest.raises(TemplateError):
        render("{{ 1 }}", {1: "not a str key"})  # type: ignore[dict-item]
    with pytest.raises(TemplateError):
        render("{{ 1 }}", [])  # type: ignore[arg-type]


def test_ensure_plain() -> None:
    ensure_plain({"a": [1, 2.0, "x", None, True, {"b": []}]})
    for bad in ({"a": (1, 2)}, {"a": {1: 2}}, {"a": object()}, [b"x"], {"a": {1, 2}}):
        with pytest.raises(TemplateError):
            ensure_plain(bad)
    loop: list[Any] = []
    loop.append(loop)
    ensure_plain(loop)  # terminates


# --- bounded work ------------------------------------------------------------------------------


def big_ctx() -> dict[str, Any]:
    return ctx(inputs={"x": list(range(2000)), "s": "a" * 100_000, "d": {f"k{i}": i for i in range(2000)}})


@pytest.mark.parametrize(
    "template",
    [
        "{% for a in inputs.x %}{% for b in inputs.x %}{% endfor %}{% endfor %}",
        "{% for a in inputs.x %}{% for b in inputs.x %}{{ b }}{% endfor %}{% endfor %}",
        "{% for a in inputs.x %}{% for b in inputs.x %}{% for c in inputs.x %}x"
        "{% endfor %}{% endfor %}{% endfor %}",
        "{% set s %}{% for a in inputs.x %}{{ inputs.s }}{% endfor %}{% endset %}{{ s|length }}",
        "{% set s %}{% for a in inputs.x %}{% for b in inputs.x %}literal text"
        "{% endfor %}{% endfor %}{% endset %}",
        "{% for a in inputs.x %}{% set t = inputs.s ~ inputs.s %}{% endfor %}",
        "{{ inputs.x|join(inputs.s) }}",
        "{{ inputs.s|replace('a', inputs.s) }}",
        "{{ inputs.s|replace('', inputs.s) }}",
        "{{ inputs.x * 1000 }}",
        "{{ [inputs.s] * 100 }}",
        "{{ [[inputs.s] * 1000] * 1000 }}",
        "{{ " + " ~ ".join(["inputs.s"] * 11) + " }}",
        "{{ " + " + ".join(["inputs.s"] * 11) + " }}",
        "{{ 2 ** 100000 }}",
        "{{ 2.0 ** 100000 }}",
        "{{ inputs.x|batch(10**9, 0)|list }}",
        "{{ inputs.x|sum(start=[]) }}",
        "{{ inputs.d|tojson(indent=100000) }}",
        "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
        "{{ " + "[" * 3000 + "]" * 3000 + " }}",
        "{% for k, v in inputs.d|items %}{% for a in inputs.x %}{% endfor %}{% endfor %}",
    ],
)
def test_heavy_templates_stop_with_a_clear_error(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError):
        render(template, big_ctx())
    assert time.monotonic() - started < 3


def test_time_limit() -> None:
    c = ctx(inputs={"x": list(range(900))})
    started = time.monotonic()
    with pytest.raises(TemplateError, match="longer than"):
        render(
            "{% for a in inputs.x %}{% for b in inputs.x %}{% if a in inputs.x %}{% endif %}{% endfor %}"
            "{% endfor %}",
            c,
            time_limit=0.2,
        )
    assert time.monotonic() - started < 1.5


def test_max_bytes() -> None:
    c = ctx(inputs={"s": "é" * 600})
    assert render("{{ inputs.s }}", c, max_bytes=100) == "é" * 600  # passed through whole, not built
    with pytest.raises(TemplateError, match="byte limit"):
        render("x{{ inputs.s }}", c, max_bytes=1000)  # 1201 bytes of UTF-8
    assert len(render("x{{ inputs.s }}", c, max_bytes=1201)) == 601
    with pytest.raises(TemplateError):
        render("{{ 'ab' * 100 }}", c, max_bytes=150)
    assert render("{{ 'ab' * 50 }}", c, max_bytes=150) == "ab" * 50


def test_big_but_legitimate_templates_work() -> None:
    c = ctx(inputs={"rows": [{"id": i, "name": f"n{i}"} for i in range(5000)]})
    csv = render("{% for r in inputs.rows %}{{ r.id }},{{ r.name }}\n{% endfor %}", c)
    assert csv.count("\n") == 5000
    assert render("{{ inputs.rows|map(attribute='id')|sum }}", c) == sum(range(5000))
    assert len(render("{{ inputs.rows|selectattr('id', 'even')|list }}", c)) == 2500


# --- static analysis ---------------------------------------------------------------------------


def test_references() -> None:
    value = {
        "a": "{{ steps.fetch.output.json }} {{ inputs.count }}",
        "b": ["{{ secrets.token }}", "{{ item }}", "{{ steps['x'].output[0].y }}"],
        "c": "{% for row in steps.rows.output %}{{ row.id }}{{ loop.index }}{% endfor %}",
        "d": "{% set n = inputs.n %}{{ n }}",
        "e": "{{ steps[inputs.which].output }}",
        "f": "{{ run.id|upper }} {{ steps.a.output|map(attribute='x')|list }}",
        "g": "not a template",
        "h": "{{ broken",
    }
    assert references(value) == {
        ("steps", "fetch", "output", "json"),
        ("inputs", "count"),
        ("secrets", "token"),
        ("item",),
        ("steps", "x", "output"),
        ("steps", "rows", "output"),
        ("inputs", "n"),
        ("steps",),
        ("inputs", "which"),
        ("run", "id"),
        ("steps", "a", "output"),
    }
    assert references("plain") == set()
    assert references(5) == set()


def test_template_errors_and_iter_templates() -> None:
    value = {"ok": "{{ a }}", "args": {"bad": "{{ a"}, "list": ["x", "{% if %}"], "filter": "{{ a|nope }}"}
    errors = dict(template_errors(value))
    assert set(errors) == {"args.bad", "list[1]", "filter"}
    assert "syntax error" in errors["args.bad"]
    assert "unknown filter 'nope'" in errors["filter"]
    assert list(iter_templates({"x y": ["{{ a }}"], "k": "{% if a %}{% endif %}"})) == [
        ('["x y"][0]', "{{ a }}"),
        ("k", "{% if a %}{% endif %}"),
    ]


# --- never a crash ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
template_parts = st.sampled_from(
    [
        "{{",
        "}}",
        "{%",
        "%}",
        " ",
        "inputs",
        ".",
        "count",
        "steps",
        "fetch",
        "output",
        "|",
        "upper",
        "join",
        "(",
        ")",
        "[",
        "]",
        "'",
        "0",
        "1",
        "*",
        "+",
        "~",
        "%",
        "for",
        "in",
        "if",
        "endfor",
        "endif",
        "set",
        "=",
        "x",
        "__class__",
        "loop",
        "self",
        "-",
        ",",
        "map",
        "attribute",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(template_parts, max_size=25).map("".join), json_values)
def test_rendering_only_ever_raises_template_error(source: str, value: Any) -> None:
    c = ctx(inputs={"count": value, "x": value})
    with contextlib.suppress(TemplateError):
        render(source, c, time_limit=1)
    references(source)
    template_errors(source)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_random_text_never_crashes(source: str) -> None:
    with contextlib.suppress(TemplateError):
        render({"v": source}, ctx(), time_limit=1)
    references(source)
    template_errors(source)
