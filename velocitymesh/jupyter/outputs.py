"""``vm.output(key, value)``: a value a notebook hands back to the workflow that runs it.

In a Jupyter kernel the value is displayed as a MIME bundle: ``text/plain`` for people
(``key = value``) and :data:`~velocitymesh.flows._notebook_child.OUTPUT_MIME` holding
``{"key": key, "value": value}`` for the ``notebook`` step, which reads the bundles back
from the executed notebook (no file or environment variable involved; see that module).
Run interactively, the same call simply shows the value; outside IPython it prints it.
Either way it returns ``value`` unchanged, so ``total = vm.output("total", compute())`` works.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from velocitymesh.flows._notebook_child import OUTPUT_MIME  # stdlib only: cheap in the kernel

__all__ = ["OUTPUT_MIME", "output"]

T = TypeVar("T")
PREVIEW_CHARS = 200


def _plain(value: Any, path: str = "the value", depth: int = 0) -> Any:
    """``value`` as plain JSON data (tuples become lists), or TypeError naming what is not JSON."""
    if depth > 100:
        raise TypeError(f"{path} is nested more than 100 levels deep (or contains itself)")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path} is {value!r}, which JSON cannot represent")
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{path} has a key of type {type(k).__name__}; JSON keys are strings")
            out[k] = _plain(v, f"{path}[{k!r}]", depth + 1)
        return out
    # numpy scalars and the like: accept what converts to a plain number or string losslessly
    item = getattr(value, "item", None)
    if callable(item):
        return _plain(item(), path, depth + 1)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _plain(tolist(), path, depth + 1)
    raise TypeError(f"{path} is a {type(value).__name__}; record dicts, lists, strings, numbers, booleans or None")


def _kernel_display() -> Any:
    """IPython's ``display`` when running in a Jupyter kernel, else None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    from IPython.display import display

    return display


def output(key: str, value: T) -> T:
    """Record ``value`` (JSON data) under ``key`` as an output of this notebook; return ``value``."""
    if not isinstance(key, str) or not key:
        raise ValueError("vm.output() needs a non-empty string key, e.g. vm.output('total', total)")
    try:
        data = _plain(value)
    except TypeError as e:
        raise TypeError(f"vm.output({key!r}, …): {e}") from None
    preview = json.dumps(data, ensure_ascii=False)
    if len(preview) > PREVIEW_CHARS:
        preview = preview[:PREVIEW_CHARS] + " …"
    display = _kernel_display()
    if display is None:
        print(f"{key} = {preview}")
    else:
        display({OUTPUT_MIME: {"key": key, "value": data}, "text/plain": f"{key} = {preview}"}, raw=True)
    return value
