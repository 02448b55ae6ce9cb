"""Workflow documents as YAML (or JSON, which is YAML) text.

Reading follows the YAML 1.2 core schema rather than PyYAML's YAML 1.1 defaults, so that
what people write means what it looks like: ``on``/``yes``/``no`` stay strings, dates
stay strings, ``1:30`` is not 5430, and JSON numbers such as ``1e3`` are numbers. The
result is always plain JSON data; anything else (binary, a document that refers to
itself, an alias bomb) is a problem with a clear message, never a traceback.

Writing uses the same rules, quotes whatever would read back differently, and writes
multi-line strings as ``|`` blocks, so ``load(dump(w)) == w``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from velocitymesh.errors import NotFoundError, SpecError, UsageError
from velocitymesh.workspace.problems import Problem, problems_from_validation_error, spec_error
from velocitymesh.workspace.spec import Workflow

__all__ = ["dump_workflow", "load_data", "load_workflow_file", "load_workflow_text"]

MAX_DEPTH = 200  # nesting of the document
MAX_VALUES = 200_000  # values in the document once YAML aliases are expanded

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_CORE_RESOLVERS = [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", ["<"]),
]


class _Loader(_BaseLoader):  # type: ignore[misc]
    """Safe loading with the YAML 1.2 core schema; a key written twice is an error."""

    yaml_implicit_resolvers: dict[Any, Any] = {}

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping",
                            node.start_mark,
                            f"found duplicate key {key_node.value!r}",
                            key_node.start_mark,
                        )
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """Quotes any string that either YAML 1.1 or 1.2 readers would take for something else."""


for _tag, _pattern, _first in _CORE_RESOLVERS:
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), _first)
    _Dumper.add_implicit_resolver(_tag, re.compile(_pattern), _first)


def _construct_int(loader: Any, node: yaml.ScalarNode) -> int:
    value = str(loader.construct_scalar(node))
    try:
        if value.startswith("0o"):
            return int(value[2:], 8)
        if value.startswith("0x"):
            return int(value[2:], 16)
        return int(value)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"the number {value[:20]}… is too long", node.start_mark
        ) from None


def _construct_float(loader: Any, node: yaml.ScalarNode) -> float:
    value = str(loader.construct_scalar(node)).lower()
    if value.endswith(".inf"):
        return float("-inf") if value.startswith("-") else float("inf")
    if value == ".nan":
        return float("nan")
    return float(value)


def _construct_bool(loader: Any, node: yaml.ScalarNode) -> bool:
    return str(loader.construct_scalar(node)).lower() == "true"


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


_YAML11_BREAKS = re.compile("[\x85\u2028\u2029\ufeff]")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line strings (code, prompts) as `|` blocks; the emitter falls back to quotes
    # when a block cannot hold the text exactly. YAML 1.1 readers take NEL, LS and PS for
    # line breaks, so text holding them is double-quoted, where they are escaped.
    style: str | None = "|" if "\n" in data else None
    if _YAML11_BREAKS.search(data):
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


# --- loading ---------------------------------------------------------------------------


def _fail(message: str, hint: str = "", path: str = "") -> SpecError:
    return spec_error([Problem(path, message, hint)])


def _where(source: str) -> str:
    return "" if source == "<string>" else f" of {source}"


def _yaml_problem(e: yaml.YAMLError, text: str, source: str) -> SpecError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    reason = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e).splitlines()[0]
    nearby = ""
    if mark is not None:
        where = f"at line {mark.line + 1}, column {mark.column + 1}{_where(source)}"
        lines = text.splitlines()
        nearby = " ".join(lines[max(mark.line - 1, 0) : mark.line + 1])
    elif isinstance(e, yaml.reader.ReaderError):
        where = f"at character {e.position + 1}{_where(source)}"
    else:
        where = f"in {source}" if source != "<string>" else "in the text"
    if "{{" in nearby or "{%" in nearby:
        hint = 'put templates in quotes: url: "{{ steps.fetch.output }}"'
    elif "\t" in nearby or "'\\t'" in str(reason):
        hint = "indent with spaces, not tabs"
    elif "maximum nesting depth" in str(reason):
        hint = "the document is nested too deeply"
    elif "constructor for the tag" in str(reason):
        hint = "remove the !!tag: only plain YAML values (text, numbers, lists, mappings) are allowed"
    elif "duplicate key" in str(reason):
        hint = "write each key once"
    else:
        hint = "check the indentation and the quoting on that line (or the line before it)"
    return _fail(f"invalid YAML {where}: {reason}", hint)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, (int, float)):
        return repr(key)
    if isinstance(key, (dt.date, dt.datetime)):
        return key.isoformat()
    raise _fail(f"a mapping key is {type(key).__name__}; keys must be text")


class _Plain:
    """Turn what the loader built into plain JSON data, guarding against alias bombs and cycles."""

    def __init__(self) -> None:
        self.values = 0
        self.open: set[int] = set()
        self.done: dict[int, Any] = {}

    def convert(self, value: Any, depth: int = 0) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise _fail(
                f"the document has more than {MAX_VALUES:,} values once its aliases are expanded",
                "use fewer YAML aliases (*name); a workflow document should be small",
            )
        if depth > MAX_DEPTH:
            raise _fail(f"the document is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(
                f"the document holds the number {value}, which JSON cannot hold",
                "write a finite number, or quote it if you mean text",
            )
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if isinstance(value, (bytes, bytearray)):
            raise _fail("binary values (!!binary) are not supported", "write the data as text, e.g. base64")
        if not isinstance(value, (dict, list, tuple, set)):
            raise _fail(f"values of type {type(value).__name__} are not supported")
        ident = id(value)
        if ident in self.open:
            raise _fail(
                "the document contains itself (a YAML alias inside its own anchor)", "remove the alias"
            )
        if ident in self.done:
            # An alias: count its values again, since they will be copied when validated.
            return self._recount(self.done[ident], depth)
        self.open.add(ident)
        if isinstance(value, dict):
            out: Any = {_key(k): self.convert(v, depth + 1) for k, v in value.items()}
        elif isinstance(value, set):
            out = sorted((self.convert(v, depth + 1) for v in value), key=repr)
        else:
            out = [self.convert(v, depth + 1) for v in value]
        self.open.discard(ident)
        self.done[ident] = out
        return out

    def _recount(self, plain: Any, depth: int) -> Any:
        stack = [(plain, depth)]
        while stack:
            v, d = stack.pop()
            self.values += 1
            if self.values > MAX_VALUES:
                self.convert(None)  # raises
            if d > MAX_DEPTH:
                raise _fail(f"the document is nested more than {MAX_DEPTH} levels deep")
            if isinstance(v, dict):
                stack.extend((x, d + 1) for x in v.values())
            elif isinstance(v, list):
                stack.extend((x, d + 1) for x in v)
        return plain


def load_data(text: str, *, source: str = "<string>") -> Any:
    """Parse YAML or JSON text into plain JSON data; raises SpecError with the line and column."""
    if not isinstance(text, str):
        raise _fail(f"expected text, not {type(text).__name__}")
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise _yaml_problem(e, text, source) from None
    except RecursionError:
        raise _fail(f"the document{_where(source)} is nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise _fail(f"invalid YAML{_where(source)}: {e}") from None
    return _Plain().convert(raw)


def workflow_from_data(data: Any) -> Workflow:
    """Validate plain data as a Workflow; raises SpecError listing every structural problem."""
    if data is None:
        raise _fail("the document is empty", "start with name: my-workflow and a list of steps:")
    if not isinstance(data, dict):
        raise _fail(
            f"the document must be a mapping (name: …, steps: …), not {type(data).__name__}",
            "start with name: my-workflow and a list of steps:",
        )
    try:
        return Workflow.model_validate(data)
    except ValidationError as e:
        raise spec_error(problems_from_validation_error(e, model=Workflow)) from None
    except (ValueError, TypeError, RecursionError) as e:  # a validator that failed unexpectedly
        raise _fail(f"the document could not be read: {e}") from None


def load_workflow_text(text: str, *, source: str = "<string>") -> Workflow:
    """A Workflow from YAML or JSON text; raises SpecError (with every problem) otherwise."""
    return workflow_from_data(load_data(text, source=source))


def load_workflow_file(path: str | Path) -> Workflow:
    """A Workflow from a YAML or JSON file.

    Raises NotFoundError when the file does not exist, UsageError when it cannot be read,
    and SpecError when it is not UTF-8 or not a valid workflow.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(
            f"no workflow file at {p}", hint="check the path; `velocitymesh init` creates example workflows"
        ) from None
    except IsADirectoryError:
        raise UsageError(
            f"{p} is a folder, not a workflow file", hint="pass the path of a .yaml file"
        ) from None
    except PermissionError:
        raise UsageError(f"cannot read {p}: permission denied", hint="check the file's permissions") from None
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise _fail(
            f"{p} is not UTF-8 text (invalid byte at line {line})", "save the file as UTF-8"
        ) from None
    return load_workflow_text(text, source=str(p))


# --- writing ---------------------------------------------------------------------------


def dump_data(data: Any) -> str:
    """YAML text for plain data, in the order given, unicode kept."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )


def dump_workflow(wf: Workflow) -> str:
    """The short YAML form of a workflow (defaults left out); ``load_workflow_text`` reads it back equal."""
    return dump_data(wf.to_data())
