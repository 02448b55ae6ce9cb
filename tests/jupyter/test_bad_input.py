"""What cannot become a step is refused where it is written, saying why and how to fix it."""

from __future__ import annotations

import functools
import math
from typing import Any

import pydantic_core
import pytest
from conftest import Cells

import velocitymesh as vm
from velocitymesh.errors import UsageError


def wf_with_step() -> Any:
    wf = vm.Workflow("bad", inputs={"count": 2})

    @wf.step
    def first():
        return 1

    return wf


@pytest.mark.parametrize(("fn", "message"), [
    (lambda x: x, "a lambda cannot become a step"),
    (len, "built-in function"),
    (math.sqrt, "compiled \\(C extension\\) module math"),
    (pydantic_core.to_json, "C extension\\) module pydantic_core"),
    (functools.partial(print, "x"), "functools.partial"),
    ("not callable", "is not a function"),
    (str, "is a class"),
])
def test_functions_without_source_are_refused(fn: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        wf_with_step().step(fn)
    assert info.value.hint  # and says how to fix it


def test_function_whose_source_cannot_be_found() -> None:
    namespace: dict[str, Any] = {}
    exec("def typed_at_the_prompt(first):\n    return first\n", namespace)  # like the plain `python` REPL
    with pytest.raises(UsageError, match="source of typed_at_the_prompt\\(\\) cannot be found") as info:
        wf_with_step().step(namespace["typed_at_the_prompt"])
    assert "notebook cell" in (info.value.hint or "")


def test_closures_generators_and_odd_parameters() -> None:
    wf = wf_with_step()
    factor = 3

    def closure(first):
        return first * factor

    with pytest.raises(UsageError, match="uses variables of the function it is defined in \\(factor\\)"):
        wf.step(closure)

    def gen(first):
        yield first

    with pytest.raises(UsageError, match="is a generator"):
        wf.step(gen)

    def star(*first):
        return first

    with pytest.raises(UsageError, match="cannot be passed by name"):
        wf.step(star)


def test_parameters_naming_nothing_list_what_exists() -> None:
    wf = wf_with_step()

    def total(first, counts, limit=10):
        return first

    with pytest.raises(UsageError) as info:
        wf.step(total)
    text = str(info.value)
    assert "'counts'" in text and "limit" not in text.split("(")[0]  # a default is fine
    assert "steps: first" in text and "inputs: count" in text and "wf.input('counts')" in text

    wf.input("first", 1)

    def both(first):
        return first

    with pytest.raises(UsageError, match="names both a step and an input"):
        wf.step(both)


def test_explicit_args_bind_any_template() -> None:
    wf = wf_with_step()

    @wf.step(args={"value": "{{ steps.first.output }}"})
    def second(value):
        return value

    step = wf["second"]
    assert step.needs == ["first"] and step.with_["args"] == {"value": "{{ steps.first.output }}"}


def test_notebook_variables_and_classes_are_refused(cells: Cells) -> None:
    cells("""
    class Table:
        pass

    data = Table()
    limit = float("nan")
    wf = vm.Workflow("nb")
    """)
    with pytest.raises(Exception, match="uses the notebook variable 'data' \\(Table\\)"):
        cells("""
        @wf.step
        def use_data():
            return data
        """)
    with pytest.raises(Exception, match="uses the class Table, defined in the notebook"):
        cells("""
        @wf.step
        def use_class():
            return Table()
        """)
    with pytest.raises(Exception, match="uses the name 'undefined_thing', which is not defined"):
        cells("""
        @wf.step
        def use_nothing():
            return undefined_thing
        """)
    with pytest.raises(Exception, match="notebook variable 'limit'"):  # NaN has no literal
        cells("""
        @wf.step
        def use_nan():
            return limit
        """)
