"""The workflow spec: the one source of truth (DESIGN.md §1).

A workflow is a typed document (pydantic v2), stored as YAML on disk and as rows in
the store. Shorthands users write by hand (``retries: 2``, ``cache: true``,
``map: "{{ … }}"``, ``trigger: manual``) are accepted and normalised, and ``dump``
writes the short form back, so YAML round-trips.

Structural checks live here (types, unknown fields); cross-field checks that need
the whole document (cycles, references, kinds, cron) live in ``validate.py`` so all
problems can be reported at once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"

InputType = Literal["string", "integer", "number", "boolean", "object", "array"]
OnError = str  # "fail" | "continue" | <step id>; checked by the validator


class _Model(BaseModel):
    # inf/NaN have no JSON form: they would be stored as null and change the content hash
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class Schedule(_Model):
    cron: str = Field(description="Five-field cron expression, e.g. '0 9 * * 1-5'.")
    timezone: str = Field("UTC", description="IANA timezone name, e.g. 'Europe/Paris'.")


class Webhook(_Model):
    secret: str | None = Field(
        None, description="Name of the workspace secret holding the HMAC key; default 'webhook:<workflow>'."
    )
    respond: str | None = Field(
        None, description="Step id whose output is the HTTP response; unset = answer 202 with the run id."
    )


class Trigger(_Model):
    schedule: Schedule | None = None
    webhook: Webhook | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if v is None or v == "manual" or v == {"manual": None} or v == {"manual": True}:
            return {}
        return v

    @property
    def is_manual(self) -> bool:
        return self.schedule is None and self.webhook is None


class InputSpec(_Model):
    type: InputType = "string"
    default: Any = None
    description: str = ""
    required: bool | None = Field(None, description="Default: required when there is no default.")

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None


class Retries(_Model):
    count: int = Field(0, ge=0, le=100)
    backoff: float = Field(1.0, ge=0, description="First delay in seconds; doubles each attempt.")
    max_delay: float = Field(60.0, ge=0)
    jitter: bool = True

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return {"count": v}
        return v


class MapSpec(_Model):
    over: Any = Field(description="A list, or a template that renders to one.")
    concurrency: int = Field(8, ge=1, le=1000)
    as_: str = Field("item", alias="as", pattern=STEP_ID_PATTERN)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, (str, list)):
            return {"over": v}
        return v


class CacheSpec(_Model):
    enabled: bool = True
    ttl: float | None = Field(None, gt=0, description="Seconds a cached output stays valid; unset = forever.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return {"enabled": v}
        return v


class Budget(_Model):
    usd: float | None = Field(None, ge=0)
    tokens: int | None = Field(None, ge=0)


class Step(_Model):
    id: str = Field(pattern=STEP_ID_PATTERN)
    kind: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    needs: list[str] = Field(default_factory=list)
    when: str | None = Field(None, description="Skip the step unless this expression is true.")
    map: MapSpec | None = None
    retries: Retries = Field(default_factory=Retries)
    timeout: float | None = Field(None, gt=0)
    cache: CacheSpec | None = None
    budget: Budget | None = None
    on_error: OnError = "fail"
    description: str = ""

    @field_validator("needs", mode="before")
    @classmethod
    def _one_need(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Workflow(_Model):
    name: str = Field(pattern=SLUG_PATTERN, description="Slug, unique in a workspace.")
    description: str = ""
    trigger: Trigger = Field(default_factory=Trigger)
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    steps: list[Step] = Field(default_factory=list)
    concurrency: int | None = Field(None, ge=1, le=1000, description="Steps running at once in one run.")
    budget: Budget | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _input_shorthand(cls, v: Any) -> Any:
        # `inputs: {count: 5}` is the same as `inputs: {count: {type: integer, default: 5}}`.
        if isinstance(v, dict):
            out: dict[str, Any] = {}
            for k, spec in v.items():
                out[k] = spec if isinstance(spec, dict) else _input_from_default(spec)
            return out
        return v

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    # --- serialisation -------------------------------------------------------
    def to_data(self) -> dict[str, Any]:
        """The short, JSON-compatible form (defaults left out) used for YAML, hashing and storage."""
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        return _shorten(data)

    def content_hash(self) -> str:
        canonical = json.dumps(self.to_data(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _input_from_default(value: Any) -> dict[str, Any]:
    kind: str = "string"
    if isinstance(value, bool):
        kind = "boolean"
    elif isinstance(value, int):
        kind = "integer"
    elif isinstance(value, float):
        kind = "number"
    elif isinstance(value, list):
        kind = "array"
    elif isinstance(value, dict):
        kind = "object"
    return {"type": kind, "default": value}


def _shorten(data: dict[str, Any]) -> dict[str, Any]:
    """Write back the shorthands people type, so a hand-written file round-trips."""
    trigger = data.get("trigger")
    if trigger == {}:
        data.pop("trigger")
    for step in data.get("steps", []):
        r = step.get("retries")
        if isinstance(r, dict) and set(r) <= {"count"}:
            step["retries"] = r.get("count", 0)
        c = step.get("cache")
        if isinstance(c, dict) and set(c) <= {"enabled"}:
            step["cache"] = c.get("enabled", True)
        m = step.get("map")
        if isinstance(m, dict) and set(m) == {"over"} and isinstance(m["over"], (str, list)):
            step["map"] = m["over"]
    return data


def workflow_json_schema() -> dict[str, Any]:
    """JSON schema of the workflow document (``velocitymesh schema``)."""
    schema = Workflow.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "VelocityMesh workflow"
    return schema
