"""Functions the agent tests name as ``sample_tools:…`` tools (trusted code, imported in-process)."""

from __future__ import annotations

from velocitymesh.agents.tools import Tool

CALLS: list[tuple[str, dict[str, object]]] = []


def add(a: int, b: int = 2) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    CALLS.append(("add", {"a": a, "b": b}))
    return a + b


async def shout(text: str) -> dict[str, str]:
    """Upper-case a text."""
    CALLS.append(("shout", {"text": text}))
    return {"text": text.upper()}


def explode(reason: str) -> None:
    """Always fails."""
    raise RuntimeError(f"exploded: {reason}")


NOT_A_FUNCTION = 42

prebuilt = Tool(
    name="prebuilt",
    description="A tool defined directly.",
    parameters={"type": "object", "properties": {}, "additionalProperties": False},
    fn=lambda: _async_value("ready"),
)


async def _async_value(value: str) -> str:
    return value
