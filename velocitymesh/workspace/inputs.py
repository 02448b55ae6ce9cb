"""Resolving a run's inputs against the workflow's declared inputs.

Values typed on a command line arrive as strings; they are converted to the declared
type (``--input count=5`` → 5). Missing required inputs and unknown names are usage
errors that say what to pass.
"""

from __future__ import annotations

import json
from typing import Any

from velocitymesh.errors import UsageError
from velocitymesh.workspace.spec import InputSpec, Workflow

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _coerce(name: str, spec: InputSpec, value: Any) -> Any:
    expected = _PY_TYPES[spec.type]
    if isinstance(value, expected) and not (spec.type in ("integer", "number") and isinstance(value, bool)):
        return value
    if isinstance(value, str) and spec.type != "string":
        text = value.strip()
        try:
            if spec.type == "boolean" and text.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return text.lower() in ("true", "yes", "1", "on")
            if spec.type == "integer":
                return int(text)
            if spec.type == "number":
                return float(text)
            if spec.type in ("object", "array"):
                parsed = json.loads(text)
                if isinstance(parsed, expected):
                    return parsed
        except ValueError:
            pass
    if spec.type == "number" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if spec.type == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise UsageError(
        f"input {name!r} must be {'an' if spec.type[0] in 'aeiou' else 'a'} {spec.type}, got {value!r:.80}",
        hint=f"pass e.g. --input {name}=" + {"integer": "5", "number": "2.5", "boolean": "true",
                                               "object": "'{\"k\": 1}'", "array": "'[1, 2]'"}.get(spec.type, "text"),
    )


def resolve_inputs(spec: Workflow, given: dict[str, Any] | None) -> dict[str, Any]:
    """The run's inputs: declared defaults, overridden by ``given``, converted to their types."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(spec.inputs))
    if unknown:
        declared = ", ".join(spec.inputs) or "none"
        raise UsageError(
            f"unknown input(s) {', '.join(unknown)} for workflow {spec.name!r}",
            hint=f"declared inputs: {declared}",
        )
    out: dict[str, Any] = {}
    missing = []
    for name, ispec in spec.inputs.items():
        if name in given:
            out[name] = _coerce(name, ispec, given[name])
        elif ispec.default is not None:
            out[name] = ispec.default
        elif ispec.is_required:
            missing.append(name)
        else:
            out[name] = None
    if missing:
        raise UsageError(
            f"missing required input(s): {', '.join(missing)}",
            hint=" ".join(f"--input {m}=…" for m in missing),
        )
    return out
