"""Shared pieces of the API models."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from velocitymesh.workspace.spec import SLUG_PATTERN

MAX_DEPTH = 200
MAX_INT = 2**31 - 1

WorkflowName = Annotated[str, Field(pattern=SLUG_PATTERN, description="The workflow's name (a slug).")]
VersionNumber = Annotated[int, Field(ge=1, le=MAX_INT, description="A version number (1, 2, …).")]
Text = Annotated[str, Field(max_length=10_000, pattern=r"^[^\x00]*$")]
WaitSeconds = Annotated[float, Field(
    ge=0, le=300,
    description="Seconds to wait for the run to finish (or to wait for approval) before answering; 0 = answer at once.",
)]


def clean(value: Any, depth: int = 0) -> None:
    """Raise ValueError for NUL characters or non-finite numbers anywhere in ``value``."""
    if depth > MAX_DEPTH:
        raise ValueError(f"the document nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text must not contain NUL characters")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for k, v in value.items():
            clean(k, depth + 1)
            clean(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            clean(v, depth + 1)


class InModel(BaseModel):
    """Base of request bodies: unknown fields are errors; no NUL, NaN or Infinity anywhere."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any) -> Any:
        clean(data)
        return data


class OutModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)
