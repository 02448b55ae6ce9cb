"""The Run form: one widget per input of the workflow, typed by the input's spec.

``input_widget`` builds the widget; ``read_inputs`` turns the widgets' values back into
the inputs a run takes (JSON for objects and lists), leaving out empty optional fields so
the workflow's defaults apply. The engine checks types and required inputs again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import panel as pn

from velocitymesh.workspace.spec import InputSpec


def label_for(name: str, spec: InputSpec) -> str:
    label = name + (" *" if spec.is_required else "")
    return f"{label} — {spec.description}" if spec.description else label


def input_widget(name: str, spec: InputSpec) -> pn.widgets.Widget:
    """A widget for one input, showing its default."""
    label = label_for(name, spec)
    default = spec.default
    kw: dict[str, Any] = {"label": label, "sizing_mode": "stretch_width", "margin": (4, 10, 4, 0)}
    if spec.type == "boolean":
        return pn.widgets.Checkbox(value=bool(default), **kw)
    if spec.type == "integer":
        return pn.widgets.IntInput(value=default if isinstance(default, int) else None, **kw)
    if spec.type == "number":
        value = float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else None
        return pn.widgets.FloatInput(value=value, **kw)
    if spec.type in ("object", "array"):
        text = json.dumps(default, indent=2) if default is not None else ""
        return pn.widgets.TextAreaInput(value=text, placeholder="JSON", height=90, **kw)
    return pn.widgets.TextInput(value="" if default is None else str(default), **kw)


def read_inputs(
    widgets: Mapping[str, pn.widgets.Widget], specs: Mapping[str, InputSpec]
) -> tuple[dict[str, Any], list[str]]:
    """``(inputs, problems)``: the values to run with, and what could not be read."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, widget in widgets.items():
        spec = specs[name]
        value = widget.value
        if spec.type in ("object", "array"):
            text = (value or "").strip()
            if not text:
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(f"{name}: not valid JSON ({e.msg} at line {e.lineno}); "
                                f"write a JSON {'object' if spec.type == 'object' else 'list'}")
                continue
        elif spec.type == "string":
            if value == "" and not spec.is_required:
                continue
        elif value is None:
            continue
        values[name] = value
    return values, problems


class RunForm:
    """The inputs of the latest saved version, and a Start button."""

    def __init__(self, specs: Mapping[str, InputSpec]) -> None:
        self.specs = dict(specs)
        self.widgets = {name: input_widget(name, spec) for name, spec in self.specs.items()}
        self.start = pn.widgets.Button(label="Start run", color="primary", margin=(8, 0, 0, 0))
        self.view = pn.Column(*self.widgets.values(), self.start, sizing_mode="stretch_width")

    def read(self) -> tuple[dict[str, Any], list[str]]:
        return read_inputs(self.widgets, self.specs)
