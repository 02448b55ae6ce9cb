"""The ``llm`` step: one model call — a prompt or messages, an optional system text, and
optionally a JSON schema the answer must match.

* **Structured output.** ``schema`` is a JSON schema, or ``pkg.module:Model`` naming a
  pydantic model (its ``model_json_schema()``). The answer is parsed and validated with
  jsonschema; when it does not match, the model is asked once more with the validation
  error, and a second miss fails the step with that error.
* **Streaming.** When the model can stream, each text delta is published on the run's bus
  channel as ``{"type": "token", "text": …}`` so a dashboard or notebook shows it as it comes.
* **Budget.** Every call goes through :func:`~velocitymesh.agents.cost.call_model`: its worst
  case must fit what is left of the step's, the run's and the workflow's budgets before it is
  sent; the actual cost lands on the step record.
* **Response cache** (``cache: true``, opt-in): keyed on the model string and the full
  request, in the engine's cache (``ctx.extra["cache"]``); a hit sends nothing and costs $0.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from velocitymesh.agents.cost import call_model, price
from velocitymesh.agents.providers import capabilities, close_model, get_model, parse_model, providers
from velocitymesh.agents.providers.base import CompletionRequest, CompletionResponse, Message, Model
from velocitymesh.errors import StepError, UsageError
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult
from velocitymesh.workspace.templating import is_template

KIND = "llm"
DESCRIPTION = "Ask a model (prompt or messages, optional JSON schema for structured output); streams tokens."

SCHEMA_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
SCHEMA_HINT = "give a JSON schema object, or a pydantic model as pkg.module:ModelName"


def _as_text(v: Any) -> Any:
    # A prompt that is exactly "{{ steps.x.output }}" renders to the output's own JSON type.
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, default=str)


class ChatMessage(StepConfig):
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return _as_text(v)


class Config(StepConfig):
    model: str | None = Field(None, description="provider:model, e.g. openai:gpt-4o-mini; default VM_DEFAULT_MODEL.")
    prompt: str | None = Field(None, description="The user's message (or give messages).")
    messages: list[ChatMessage] | None = Field(None, description="A conversation of {role, content}.")
    system: str | None = Field(None, description="Instructions sent as the system message.")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int = Field(1024, gt=0, description="Most tokens the answer may have (budgets count on it).")
    schema_: dict[str, Any] | str | None = Field(
        None, alias="schema", description="JSON schema of the answer, or pkg.module:PydanticModel."
    )
    cache: bool = Field(False, description="Reuse the answer of an identical earlier request.")

    @field_validator("prompt", "system", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return _as_text(v)

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> Config:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages (one of them)")
        if self.messages is not None and not self.messages:
            raise ValueError("messages is empty")
        return self


# --- validation (no I/O) ---------------------------------------------------------------------
def check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Static checks: the model string and provider, and that the model can honour a schema."""
    problems: list[tuple[str, str, str]] = []
    schema = config.get("schema")
    model = config.get("model")
    if isinstance(model, str) and not is_template(model):
        try:
            provider, _ = parse_model(model)
        except UsageError as e:
            problems.append(("model", e.message, e.hint or ""))
        else:
            if provider not in providers():
                problems.append(("model", f"unknown model provider {provider!r}",
                                 f"known providers: {', '.join(providers())}"))
            elif schema is not None and not capabilities(model).json_schema:
                problems.append(("schema", f"model {model} cannot return structured output (no JSON schema support)",
                                 "use a model that can, e.g. openai:gpt-4o-mini or anthropic:claude-sonnet-4-5, "
                                 "or drop schema and parse the text"))
    if isinstance(schema, dict):
        problems.extend(("schema", message, "fix the JSON schema") for message in _schema_problems(schema))
    elif isinstance(schema, str) and not is_template(schema) and not SCHEMA_PATH.match(schema):
        problems.append(("schema", f"{schema!r} is not a pydantic model path", SCHEMA_HINT))
    return problems


def _schema_problems(schema: dict[str, Any]) -> list[str]:
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        return [f"not a valid JSON schema: {e.message}"]
    return []


# --- running -----------------------------------------------------------------------------------
async def run(config: Config, ctx: StepContext) -> StepResult:
    model_string = config.model or ctx.settings.default_model
    schema = load_schema(config.schema_)
    model = get_model(model_string, ctx.settings)
    try:
        return await _Call(config, ctx, model, schema).run()
    finally:
        await close_model(model)


def load_schema(schema: dict[str, Any] | str | None) -> dict[str, Any] | None:
    """The JSON schema: as given, or a pydantic model's ``model_json_schema()`` for ``pkg.mod:Model``."""
    if schema is None or isinstance(schema, dict):
        return schema
    if not SCHEMA_PATH.match(schema):
        raise UsageError(f"schema {schema!r} is neither a JSON schema nor a pydantic model path", hint=SCHEMA_HINT)
    module_name, _, attr = schema.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"schema {schema!r} could not be loaded: {e}",
                         hint="check the module is importable where the workflow runs") from e
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        raise UsageError(f"schema {schema!r} is not a pydantic model", hint=SCHEMA_HINT)
    return target.model_json_schema()


def response_key(model_string: str, request: CompletionRequest) -> str:
    """The response-cache key: the model and the full request."""
    blob = json.dumps({"model": model_string, "request": request.to_json()}, sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"), default=str)
    return "llm:" + hashlib.sha256(blob.encode()).hexdigest()


class _Call:
    def __init__(self, config: Config, ctx: StepContext, model: Model, schema: dict[str, Any] | None) -> None:
        self.config, self.ctx, self.model, self.schema = config, ctx, model, schema
        self.cost = 0.0
        self.tokens = 0
        self.calls: list[dict[str, Any]] = []

    async def run(self) -> StepResult:
        ctx, model = self.ctx, self.model
        if self.schema is not None and not model.capabilities.json_schema:
            raise UsageError(f"model {model.model_string} cannot return structured output",
                             hint="use a model with JSON schema support, or drop schema")
        request = CompletionRequest(
            messages=_messages(self.config), json_schema=self.schema, max_tokens=self.config.max_tokens,
            temperature=self.config.temperature, stream=model.capabilities.streaming and ctx.publish is not None,
        )
        cache = ctx.extra.get("cache") if self.config.cache else None
        key = response_key(model.model_string, request)
        if cache is not None:
            hit, value = await cache.get(key)
            if hit:
                ctx.logger.info(f"answer of {model.model_string} taken from the response cache")
                return StepResult(output=value, details={"response_cache": "hit"})
        if price(model.model_string, ctx.settings.prices) is None:
            ctx.logger.warning(f"no price known for {model.model_string}: its cost is recorded as $0 "
                               "(add it to VM_PRICES)")
        response = await self._send(request)
        parsed: Any = None
        if self.schema is not None:
            parsed, error = parse_answer(response.text, self.schema)
            if error is not None:
                ctx.logger.warning(f"the answer does not match the schema ({error}); asking the model to repair it")
                if ctx.publish is not None:
                    await ctx.publish({"type": "repair", "error": error})
                repair = CompletionRequest(
                    messages=[*request.messages, Message("assistant", response.text or ""),
                              Message("user", REPAIR.format(error=error))],
                    json_schema=request.json_schema, max_tokens=request.max_tokens,
                    temperature=request.temperature, stream=request.stream,
                )
                response = await self._send(repair)
                parsed, error = parse_answer(response.text, self.schema)
                if error is not None:
                    raise StepError(
                        f"the answer of {model.model_string} does not match the schema, even after one repair: "
                        f"{error}",
                        hint="simplify the schema, raise max_tokens, or use a stronger model",
                    )
        output = {
            "text": response.text,
            "json": parsed,
            "model": model.model_string,
            "usage": {"input_tokens": sum(c["input_tokens"] for c in self.calls),
                      "output_tokens": sum(c["output_tokens"] for c in self.calls)},
            "finish_reason": response.finish_reason,
        }
        if cache is not None:
            await cache.put(key, output, None)
        return StepResult(output=output, cost_usd=self.cost, tokens=self.tokens,
                          details={"calls": self.calls, "repaired": len(self.calls) > 1})

    async def _send(self, request: CompletionRequest) -> CompletionResponse:
        publish = self.ctx.publish

        async def on_token(text: str) -> None:
            if publish is not None:
                await publish({"type": "token", "text": text})

        response, cost = await call_model(self.model, request, budget=self.ctx.budget,
                                          on_token=on_token if request.stream else None)
        self.cost += cost
        self.tokens += response.usage.total
        self.calls.append({"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens,
                           "cost_usd": cost, "finish_reason": response.finish_reason, "model": response.model})
        return response


REPAIR = ("Your answer does not match the required JSON schema: {error}. Reply again with only the corrected JSON "
          "value, no prose and no code fences.")


def _messages(config: Config) -> list[Message]:
    out: list[Message] = []
    if config.system:
        out.append(Message("system", config.system))
    if config.prompt is not None:
        out.append(Message("user", config.prompt))
    for m in config.messages or []:
        out.append(Message(m.role, m.content))
    return out


MAX_ERROR = 500  # a validation message quotes the offending value: keep the repair prompt small
_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def parse_answer(text: str | None, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """The answer parsed as JSON and validated against the schema: (value, None) or (None, what is wrong)."""
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    if not text or not text.strip():
        return None, "the answer is empty"
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except ValueError as e:
        return None, f"the answer is not JSON ({e})"
    validator = validator_for(schema)(schema)
    error = best_match(validator.iter_errors(value))
    if error is None:
        return value, None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    message = error.message if len(error.message) <= MAX_ERROR else error.message[:MAX_ERROR] + "…"
    return None, f"at {where}: {message}" if where else message
