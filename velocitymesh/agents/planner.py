"""The offline planner: plain words → a workflow, with no model.

When no provider is configured, generation falls back to this. It knows the common
phrasings and nothing more, and says so: every clause it could not map is listed in
``unmapped`` rather than guessed at.

- schedules in words → cron + timezone (``schedule_words``); "when a webhook arrives"
  → a webhook trigger;
- "fetch/get/download/call <URL>" → ``http`` GET (several URLs joined by "and" run in
  parallel);
- "post/send/notify/webhook to <URL>", "post to slack [<URL>]" → ``http`` POST whose
  JSON body is templated from the previous step (no URL for a known service → the URL
  is read from a secret, and the explanation says which to set);
- "summarise/classify/extract/translate/…" → ``llm`` with a prompt made of the user's
  own words followed by the previous step's output;
- "query/aggregate/count/group by/sum/average/top N by … (with SQL)" → ``sql`` over the
  previous step's output (or a named data file);
- "compute/filter/transform … (with python)" → a ``python`` skeleton to fill in;
- "run the notebook X.ipynb" → ``notebook``; "run the workflow X" → ``workflow``;
  "wait for approval" → ``approval``.

Clauses are read in sentence order and chained ("then", "and", ",": each step needs
the previous one). A kind the catalogue does not have (say ``notebook`` before that
step kind is installed) is not emitted: the clause is reported in ``unmapped`` with
the reason, so the plan stays valid. ``current`` turns a request into an edit:
schedule changes, a model change, removed steps, and new steps appended after the
workflow's last step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from velocitymesh.agents.plan_steps import (
    Builder,
    approval_step,
    llm_step,
    post_step,
    python_step,
    run_step,
    sql_step,
)
from velocitymesh.agents.plan_words import PY_HINT, SQL_HINT, WEBHOOK_TRIGGER, Clause, clauses, first_verb, slug
from velocitymesh.agents.schedule_words import describe_cron, parse_schedule
from velocitymesh.workspace.spec import Workflow

__all__ = ["Plan", "plan"]

DEFAULT_LLM_MODEL = "openai:gpt-4o-mini"


@dataclass
class Plan:
    """The planned document (plain data, to be validated by the caller) and what it could not map."""

    data: dict[str, Any]
    explanation: str
    unmapped: list[str] = field(default_factory=list)


# --- one clause at a time ----------------------------------------------------------------------


def _clause(b: Builder, clause: Clause) -> None:
    text = clause.text
    for_each = bool(re.match(r"for\s+(?:each|every|all)\b", text, re.I))
    found = first_verb(text)
    urls = b.text.tokens(text, "u")
    if found is None:
        if SQL_HINT.search(text) and (b.sources or b.text.tokens(text, "f")):
            sql_step(b, text, "query", clause.joiner)
            return
        if PY_HINT.search(text):
            python_step(b, text, "compute", clause.joiner, for_each)
            return
        if urls:  # "https://…" alone in a clause: fetch it
            for k, token in enumerate(urls):
                b.add_get(token, "fetch", clause.joiner if k == 0 else "and")
            return
        if text.strip(" \0"):
            b.unmapped.append(b.text.unmask(text).strip())
        return
    kind, sid, surface = found
    condition = re.match(r"(?:only\s+)?(?:if|when|unless|in\s+case)\b(.*?)(?=\b" + re.escape(surface) + r"\b)", text,
                         re.I)
    trailing = re.search(r"\b(?:only\s+)?(?:if|unless)\s+\S.*$", text[text.lower().find(surface.lower()):], re.I)
    for cond in (condition.group(0) if condition and condition.group(1).strip(" ,") else None,
                 trailing.group(0) if trailing else None):
        if cond:
            b.unmapped.append(f"{b.text.unmask(cond).strip(' ,')} (conditions are not mapped: add when: to the step)")
    if kind == "approval":
        approval_step(b, text, clause.joiner)
        return
    if kind == "run":
        if not run_step(b, text, clause.joiner):
            b.unmapped.append(f"{b.text.unmask(text)} (run what? name a notebook (.ipynb) or a workflow)")
        return
    if kind == "store":
        if SQL_HINT.search(text) or re.search(r"\btop\s+\d+|\b(?:by|per)\s+\w+|\b(?:database|table)\b", text, re.I):
            kind, sid = "sql", "store"
        else:
            b.unmapped.append(f"{b.text.unmask(text)} (there is no storage step kind: use a sql step with "
                              "database: to keep rows)")
            return
    if kind == "get" and "webhook" in text.lower():
        kind, sid = "post", "notify"
    if kind in ("llm", "python") and SQL_HINT.search(text):
        kind, sid = "sql", "query"
    if kind in ("llm", "sql") and PY_HINT.search(text):
        kind, sid = "python", sid
    if kind == "sql" and urls and not b.sources and not re.search(r"\b(?:top\s+\d+|by|per|sql)\b", text, re.I):
        kind, sid = "get", "fetch"  # "query https://api…" is a GET
    if kind == "get":
        if urls:
            for k, token in enumerate(urls):
                b.add_get(token, sid, clause.joiner if k == 0 else "and")
            rest = text[text.rfind(urls[-1]) + len(urls[-1]):]
            if SQL_HINT.search(rest):  # "fetch URL and <do something> with SQL"
                sql_step(b, rest, "query", "then")
            elif PY_HINT.search(rest):
                python_step(b, rest, "compute", "then", False)
        elif re.search(r"\bnotebook\b", text, re.I) or b.text.tokens(text, "f"):
            if not run_step(b, text, clause.joiner):
                sql_step(b, text, "query", clause.joiner)
        elif re.search(r"\btop\s+\d+\s+(?:\w+\s+){0,3}?by\b|\b(?:by|per)\s+\w+", text, re.I) and b.sources:
            sql_step(b, text, "query", clause.joiner)
        else:
            b.unmapped.append(f"{b.text.unmask(text)} (no URL to {surface.lower()})")
        return
    if kind == "post":
        post_step(b, text, sid, clause.joiner)
    elif kind == "llm":
        llm_step(b, text, sid, clause.joiner, for_each)
    elif kind == "sql":
        sql_step(b, text, sid, clause.joiner)
    elif kind == "python":
        python_step(b, text, sid, clause.joiner, for_each)


# --- edits ---------------------------------------------------------------------------------------


def _edit_existing(b: Builder, masked: str, data: dict[str, Any]) -> str:
    """Apply the edits that change existing steps; return the text left for new steps."""
    steps: list[dict[str, Any]] = data["steps"]
    for m in list(re.finditer(r"\b(?:remove|delete|drop)\s+(?:the\s+)?(?:step\s+)?[\"'`]?(\w+)[\"'`]?"
                              r"(?:\s+step)?\b", masked, re.I)):
        sid = m.group(1)
        if sid in b.existing:
            data["steps"] = steps = [s for s in steps if s["id"] != sid]
            for s in steps:
                if sid in s.get("needs", []):
                    s["needs"] = [n for n in s["needs"] if n != sid]
            b.existing.pop(sid)
            b.notes.append(f"removed the step {sid}")
            masked = masked.replace(m.group(0), " ")
    models = b.text.tokens(masked, "m")
    if models and not b.text.tokens(masked, "u"):
        model = b.text.values[models[0]]
        changed = [s["id"] for s in steps if s.get("kind") in ("llm", "agent")]
        for s in steps:
            if s["id"] in changed:
                s.setdefault("with", {})["model"] = model
        if changed:
            b.notes.append(f"the steps {', '.join(changed)} now use {model}")
            masked = re.sub(r"\b(?:use|switch\s+to|change\s+the\s+model\s+to)\s+(?:the\s+model\s+)?" + models[0],
                            " ", masked, flags=re.I)
            masked = masked.replace(models[0], " ")
    masked = re.sub(r"\b(?:change|set|move|update|make)\s+(?:the\s+)?(?:schedule|trigger|it)\s+(?:to\s+)?(?:run\s+)?",
                    " ", masked, flags=re.I)
    masked = re.sub(r"\b(?:also|additionally|add\s+a\s+step\s+(?:that|to)|at\s+the\s+end)\b", " ", masked, flags=re.I)
    return masked


# --- the plan ------------------------------------------------------------------------------------


def _explain(b: Builder, tz: str | None, cron: str | None, webhook: bool) -> str:
    lines: list[str] = []
    if cron:
        lines.append(f"Runs {describe_cron(cron)} ({tz or 'UTC'}).")
    elif webhook:
        lines.append("Runs when its webhook is called.")
    elif any("schedule not understood" in u for u in b.unmapped):
        lines.append("Runs when started: the schedule was not understood (see below).")
    else:
        lines.append("Runs when started (no schedule was given).")
    for s in b.steps:
        needs = f" after {', '.join(s.needs)}" if s.needs else ""
        lines.append(f"- {s.id} ({s.kind}{needs}): {s.what}")
    if any(s.kind == "llm" for s in b.steps):
        lines.append(f"The llm steps use {b.llm_model}; change their model: to the provider you use.")
    lines += [n[0].upper() + n[1:] + "." for n in b.notes]
    if b.unmapped:
        lines.append("Not understood (left out): " + "; ".join(b.unmapped) + ".")
    lines.append("Made by the offline planner, which knows common phrasings only; configure a model provider "
                 "for anything else.")
    return "\n".join(lines)


def plan(
    request: str,
    *,
    catalogue: Sequence[Mapping[str, Any]] = (),
    current: Workflow | None = None,
    llm_model: str = DEFAULT_LLM_MODEL,
    name: str | None = None,
) -> Plan:
    """A workflow document for ``request`` (or ``current`` edited by it), with what could not be mapped.

    ``catalogue`` lists the step kinds available (``{name, description, config}``); kinds not in it
    are not used. The result is plain data: the caller validates it like any other document.
    """
    b = Builder(request, catalogue, llm_model, current)
    masked = b.text.masked
    data: dict[str, Any] = current.to_data() if current is not None else {}
    data.setdefault("steps", [])
    if current is not None:
        masked = _edit_existing(b, masked, data)
    models = b.text.tokens(masked, "m")
    if models:
        b.llm_model = b.text.values[models[0]]
        masked = re.sub(r"\b(?:using|with|use|on)\s+(?:the\s+model\s+)?" + models[0], " ", masked, flags=re.I)
        masked = masked.replace(models[0], " ")
    webhook = WEBHOOK_TRIGGER.search(masked)
    if webhook:
        masked = masked[: webhook.start()] + " " + masked[webhook.end():]
    sched = parse_schedule(masked)
    for s, e in sorted([*sched.spans, *sched.unmapped_spans], reverse=True):
        masked = masked[:s] + " " + masked[e:]
    masked = re.sub(r"[ \t]{2,}", " ", masked)
    b.unmapped += sched.unmapped
    b.notes += sched.notes
    if sched.cron and any("schedule not understood" in u for u in sched.unmapped):
        # part of the schedule was not understood: a cron for the rest would run at the wrong times
        b.notes.append(f"the schedule was left out because part of it was not understood (it read as "
                       f"{describe_cron(sched.cron)})")
        sched.cron = None
    for clause in clauses(masked):
        _clause(b, clause)
    data["steps"] = [*data["steps"], *(s.to_data() for s in b.steps)]
    # the trigger: a new schedule replaces the old one; a timezone alone moves the existing schedule
    trigger: dict[str, Any] = dict(data.get("trigger") or {}) if isinstance(data.get("trigger"), dict) else {}
    cron = sched.cron
    tz = sched.timezone
    if cron:
        trigger["schedule"] = {"cron": cron, "timezone": tz or "UTC"}
    elif tz and isinstance(trigger.get("schedule"), dict):
        trigger["schedule"] = {**trigger["schedule"], "timezone": tz}
        cron = trigger["schedule"].get("cron")
    elif sched.manual:
        trigger.pop("schedule", None)
    if webhook:
        trigger["webhook"] = trigger.get("webhook") or {}
    if trigger:
        data["trigger"] = trigger
    else:
        data.pop("trigger", None)
    if b.inputs:
        data["inputs"] = {**b.inputs, **(data.get("inputs") or {})}
    if current is None:
        ids = list(dict.fromkeys(re.sub(r"_\d+$", "", s.id) for s in b.steps))
        data = {"name": name or slug("-".join(ids[:4]) or "generated"),
                "description": re.sub(r"\s+", " ", request.strip())[:200], **data}
    elif name:
        data["name"] = name
    explanation = _explain(b, tz if cron else None, cron, bool(webhook))
    return Plan(data=data, explanation=explanation, unmapped=list(b.unmapped))


