"""Step kinds: one module each, found through a registry that the ``velocitymesh.steps``
entry point group can extend (a third-party package points an entry point at a module
that exports ``KIND``, ``Config``, ``run`` and optionally ``DESCRIPTION``, ``check`` and
``RAW_FIELDS`` — the ``with:`` fields never rendered as templates)."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from types import ModuleType

from velocitymesh.flows.steps.base import StepConfig, StepContext, StepKind, StepResult

__all__ = ["StepConfig", "StepContext", "StepKind", "StepResult", "get_kind", "kinds", "register"]

log = logging.getLogger(__name__)

BUILTIN = (
    "python", "http", "sql", "transform", "branch", "workflow", "approval", "llm", "agent", "embed", "search",
    "notebook",
)

_registry: dict[str, StepKind] = {}
_loaded = False


def _from_module(module: ModuleType) -> StepKind:
    return StepKind(
        name=module.KIND,
        config=module.Config,
        run=module.run,
        description=getattr(module, "DESCRIPTION", (module.__doc__ or "").strip().splitlines()[0]),
        check=getattr(module, "check", None),
        raw=frozenset(getattr(module, "RAW_FIELDS", ())),
    )


def register(kind: StepKind) -> None:
    """Add (or replace) a step kind; tests and plugins use it."""
    _registry[kind.name] = kind


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for name in BUILTIN:
        try:
            module = importlib.import_module(f"velocitymesh.flows.steps.{name}")
        except ModuleNotFoundError as e:  # a kind not built yet must not break the others
            if e.name and e.name.startswith("velocitymesh.flows.steps."):
                continue
            raise
        kind = _from_module(module)
        _registry.setdefault(kind.name, kind)
    for ep in entry_points(group="velocitymesh.steps"):
        try:
            kind = _from_module(ep.load())
        except Exception as e:  # a broken plugin is reported, not fatal
            log.warning("step kind plugin %s could not be loaded: %s", ep.name, e)
            continue
        _registry.setdefault(kind.name, kind)
    _loaded = True


def kinds() -> dict[str, StepKind]:
    """Every known step kind by name."""
    _load()
    return dict(_registry)


def get_kind(name: str) -> StepKind:
    _load()
    return _registry[name]
