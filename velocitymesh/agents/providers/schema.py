"""Small wire details every adapter shares: tool-call arguments, the structured-output
wrapper, server error messages.

Both wire APIs take only an *object* as a structured-output schema (OpenAI's
``response_format``, Anthropic's tool ``input_schema``), so a schema of another type (a list
of items, a number) is wrapped as ``{"value": …}`` on the way out and unwrapped on the way
back; callers see the answer their schema describes.
"""

from __future__ import annotations

import json
from typing import Any

WRAP_KEY = "value"


def parse_arguments(raw: str | None) -> dict[str, Any]:
    """A tool call's arguments as a dict; malformed JSON is kept under ``_raw`` for the agent loop to report."""
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}


def dump_arguments(arguments: dict[str, Any]) -> str:
    """Arguments back to the JSON text a model sent (a malformed original is sent back unchanged)."""
    if set(arguments) == {"_raw"} and isinstance(arguments["_raw"], str):
        return arguments["_raw"]
    return json.dumps(arguments, ensure_ascii=False)


def needs_wrap(schema: dict[str, Any]) -> bool:
    return schema.get("type") != "object"


def wire_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as sent: an object schema as it is, anything else wrapped under ``value``."""
    if not needs_wrap(schema):
        return schema
    inner = {k: v for k, v in schema.items() if k not in ("$defs", "definitions", "$schema")}
    wrapped: dict[str, Any] = {
        "type": "object",
        "properties": {WRAP_KEY: inner},
        "required": [WRAP_KEY],
        "additionalProperties": False,
    }
    for k in ("$defs", "definitions"):  # "#/$defs/…" references keep resolving at the new root
        if k in schema:
            wrapped[k] = schema[k]
    return wrapped


def unwrap_text(schema: dict[str, Any], text: str | None) -> str | None:
    """The answer's JSON text with the ``value`` wrapper removed (left as it is when it does not parse)."""
    if text is None or not needs_wrap(schema):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict) and set(value) == {WRAP_KEY}:
        return json.dumps(value[WRAP_KEY], ensure_ascii=False)
    return text


def strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict structured outputs accept the schema: every object closed
    (``additionalProperties: false``) with all its properties required. Other schemas are sent
    non-strict; the answer is validated by the caller either way."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False:
                return False
            if set(schema.get("required", [])) != set(props):
                return False
        return all(strict_compatible(v) for k, v in schema.items() if k not in ("enum", "const", "default"))
    if isinstance(schema, list):
        return all(strict_compatible(v) for v in schema)
    return True


def server_message(body: object, fallback: str) -> str:
    """The human part of an API error body (``{"error": {"message": …}}`` or ``{"message": …}``)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str) and inner["message"]:
            return str(inner["message"])
        if isinstance(inner, str) and inner:
            return inner
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return fallback


CONTEXT_MARKERS = (
    "context length", "context_length", "context window", "maximum context", "prompt is too long",
    "too many tokens", "reduce the length",
)


def is_context_error(code: str | None, message: str) -> bool:
    text = f"{code or ''} {message}".lower()
    return any(m in text for m in CONTEXT_MARKERS)
