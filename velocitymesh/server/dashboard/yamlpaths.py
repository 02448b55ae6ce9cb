"""Where a problem is in the YAML text: a problem's path (``steps[2].with.prompt``) → the
line that holds it, for the editor's gutter markers.

The text is composed (YAML nodes keep their line numbers), never constructed, so this
works on any document the parser accepts; a path that goes further than the document
does points at the deepest part that exists.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

_TOKEN = re.compile(r'\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|\.?([A-Za-z_][A-Za-z0-9_-]*)')
_YAML_LINE = re.compile(r"\bline (\d+)")


def split_path(path: str) -> list[str | int]:
    """``steps[2].with["a b"]`` → ``["steps", 2, "with", "a b"]``."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None or m.end() == pos:
            break
        index, quoted, name = m.groups()
        if index is not None:
            parts.append(int(index))
        elif quoted is not None:
            parts.append(json.loads(quoted))
        else:
            parts.append(name)
        pos = m.end()
    return parts


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and (key.value == part or key.value == str(part)):
                return key if isinstance(part, str) and value is None else value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def _key_line(node: Any, part: str | int) -> int | None:
    """The line of the key ``part`` in a mapping (more useful than its value's line for blocks)."""
    if isinstance(node, yaml.MappingNode):
        for key, _value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return int(key.start_mark.line)
    return None


def line_of(text: str, path: str) -> int | None:
    """The 0-based line of ``path`` in ``text``; None when the text does not parse."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if root is None:
        return 0
    node: Any = root
    line = int(root.start_mark.line)
    for part in split_path(path):
        key_line = _key_line(node, part)
        nxt = _child(node, part)
        if nxt is None:
            break
        line = key_line if key_line is not None else int(nxt.start_mark.line)
        node = nxt
    return line


def line_of_problem(text: str, path: str, message: str) -> int:
    """Where to mark a problem: its path's line, or the line a YAML syntax error names, or 0."""
    if path:
        found = line_of(text, path)
        if found is not None:
            return found
    m = _YAML_LINE.search(message)
    if m:
        return max(0, int(m.group(1)) - 1)
    return 0


def ace_annotations(text: str, problems: list[Any]) -> list[dict[str, Any]]:
    """Ace editor annotations (``row``, ``column``, ``text``, ``type``) for validation problems."""
    out = []
    for p in problems:
        hint = f" ({p.hint})" if getattr(p, "hint", "") else ""
        out.append({
            "row": line_of_problem(text, p.path, p.message), "column": 0,
            "text": f"{p.path + ': ' if p.path else ''}{p.message}{hint}",
            "type": "warning" if p.severity == "warning" else "error",
        })
    return out
