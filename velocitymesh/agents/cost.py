"""What model calls cost, and calls that never overspend a budget.

Prices come from ``prices.json`` (USD per million input/output tokens, per ``provider:model``)
overlaid with ``VM_PRICES``. A key covers its model and that model's dated snapshots and
aliases (``gpt-4o-2024-08-06``, ``claude-sonnet-4-5-20250929``, ``gpt-4-0613``,
``claude-3-5-haiku-latest``) but no other model: ``gpt-4.1``, ``gpt-4-32k`` and
``claude-opus-4-6`` are priced only if listed, because a variant's price is often not its
family's. ``compatible:`` and ``fake:`` (an empty model part) cover every model of theirs and
cost nothing.

**The worst case of a call** is an upper bound of its prompt in tokens plus ``max_tokens``.
The bound is the number of UTF-8 bytes of everything sent (``request.prompt_text()``, the
messages, tools and schema as JSON) plus a fixed allowance per message (role markers) and,
when tools or a schema are sent, for the provider's tool preamble. Every token of a
byte-level BPE covers at least one byte, so the bound never undercounts; it overcounts
about fourfold for English, which only means a call is refused a little early.

**Unknown prices.** A model missing from the table costs $0 (a warning is logged once), but a
*dollar* budget cannot be guaranteed for it, so :func:`call_model` refuses such a call with
:class:`BudgetExceeded` saying to add the price to ``VM_PRICES``. Token budgets work whatever
the price.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from velocitymesh.agents.budget import Budget
from velocitymesh.agents.providers import parse_model
from velocitymesh.agents.providers.base import CompletionRequest, CompletionResponse, Model, OnToken, Usage
from velocitymesh.errors import BudgetExceeded, ConfigurationError

__all__ = ["Price", "bind_prices", "call_model", "cost_usd", "price", "prompt_bound", "worst_case"]

log = logging.getLogger(__name__)

PRICES_FILE = Path(__file__).with_name("prices.json")
Price = tuple[float, float]  # USD per million (input, output) tokens

# what may follow a priced model's name in a snapshot of it: a date, a 4-digit (MMDD) snapshot, "-latest"
SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)$")

BASE_TOKENS = 16  # reply priming and framing of the whole request
PER_MESSAGE_TOKENS = 8  # role and separator tokens around each message
TOOL_PREAMBLE_TOKENS = 600  # the system text providers add for tools (Anthropic documents up to ~530)

_warned: set[str] = set()
_bound: weakref.WeakKeyDictionary[Model, Mapping[str, Any]] = weakref.WeakKeyDictionary()


def _parse(raw: Mapping[str, Any], source: str) -> dict[str, Price]:
    table: dict[str, Price] = {}
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        try:
            if ":" not in key:
                raise ValueError("the key must be provider:model-prefix")
            if isinstance(value, Mapping):
                pin, pout = float(value["input"]), float(value["output"])
            else:
                pin, pout = (float(v) for v in value)
            if pin < 0 or pout < 0:
                raise ValueError("prices cannot be negative")
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigurationError(
                f"{source}: the price of {key!r} is invalid ({e})",
                hint='write {"provider:model": {"input": USD_PER_MILLION, "output": USD_PER_MILLION}}',
            ) from None
        table[key] = (pin, pout)
    return table


@functools.cache
def builtin_prices() -> dict[str, Price]:
    """The shipped price table."""
    return _parse(json.loads(PRICES_FILE.read_text()), str(PRICES_FILE))


def price(model_string: str, overrides: Mapping[str, Any] | None = None) -> Price | None:
    """USD per million (input, output) tokens of the model, or None when no price is known."""
    provider, name = parse_model(model_string)
    table = {**builtin_prices(), **(_parse(overrides, "VM_PRICES") if overrides else {})}
    best: tuple[int, Price] | None = None
    for key, p in table.items():
        kp, _, kname = key.partition(":")
        if kp != provider:
            continue
        matches = kname == "" or name == kname or (name.startswith(kname) and SNAPSHOT.match(name[len(kname):]))
        if matches and (best is None or len(kname) >= best[0]):
            best = (len(kname), p)
    return best[1] if best else None


def cost_usd(model_string: str, usage: Usage, overrides: Mapping[str, Any] | None = None) -> float:
    """The dollars ``usage`` cost on the model; 0 (with a warning, once) when its price is unknown."""
    p = price(model_string, overrides)
    if p is None:
        if model_string not in _warned:
            _warned.add(model_string)
            log.warning("no price known for %s: its calls are recorded as $0 (add it to VM_PRICES)", model_string)
        return 0.0
    return (usage.input_tokens * p[0] + usage.output_tokens * p[1]) / 1_000_000


def prompt_bound(request: CompletionRequest) -> int:
    """An upper bound of the request's input tokens (see the module docstring)."""
    n = len(request.prompt_text().encode("utf-8")) + BASE_TOKENS + PER_MESSAGE_TOKENS * len(request.messages)
    if request.tools or request.json_schema is not None:
        n += TOOL_PREAMBLE_TOKENS
    return n


def worst_case(
    model_string: str, request: CompletionRequest, overrides: Mapping[str, Any] | None = None
) -> tuple[int, float]:
    """The most the call can use: (tokens, USD). USD is 0 when the price is unknown."""
    prompt = prompt_bound(request)
    p = price(model_string, overrides)
    usd = (prompt * p[0] + request.max_tokens * p[1]) / 1_000_000 if p else 0.0
    return prompt + request.max_tokens, usd


def bind_prices(model: Model, overrides: Mapping[str, Any]) -> None:
    """Remember the price overrides (``settings.prices``) a model was made with; ``get_model`` calls it."""
    if overrides:
        _parse(overrides, "VM_PRICES")  # a bad override is reported when the model is made, not mid-run
        try:
            _bound[model] = dict(overrides)
        except TypeError:  # an unhashable Model subclass (eq=True dataclass): built-in prices apply
            log.warning("cannot attach VM_PRICES to %s (unhashable model object)", model.model_string)


def prices_for(model: Model) -> Mapping[str, Any] | None:
    return _bound.get(model)


async def call_model(
    model: Model,
    request: CompletionRequest,
    *,
    budget: Budget | None,
    on_token: OnToken | None = None,
) -> tuple[CompletionResponse, float]:
    """Call the model within ``budget``: its worst case is checked against what is left at every
    level and held while the call runs (nothing is sent when it does not fit), then the actual
    usage is charged. Returns the response and its cost in USD."""
    ms = model.model_string
    overrides = prices_for(model)
    if budget is None:
        response = await model.complete(request, on_token=on_token)
        return response, cost_usd(ms, response.usage, overrides)
    if price(ms, overrides) is None:
        limited = [b for b in budget.chain() if b.usd is not None]
        if limited:
            raise BudgetExceeded(
                f"the {limited[0].label} has a budget of ${limited[0].usd:g} but no price is known for {ms}, so "
                "the budget cannot be guaranteed; nothing was sent",
                hint=f'add its price: VM_PRICES=\'{{"{ms}": {{"input": 1.0, "output": 2.0}}}}\' (USD per million '
                "tokens), or give a tokens budget instead",
            )
    worst_tokens, worst_usd = worst_case(ms, request, overrides)
    with budget.hold(worst_tokens, worst_usd) as charge:
        response = await model.complete(request, on_token=on_token)
        usage = response.usage
        if usage.total == 0:
            # a server that reports no usage: charge what the call could have used, never less
            log.warning("%s reported no token usage; charging the worst case (%d tokens)", ms, worst_tokens)
            usage = response.usage = Usage(prompt_bound(request), request.max_tokens)
        cost = cost_usd(ms, usage, overrides)
        charge.settle(usage.total, cost)
    return response, cost
