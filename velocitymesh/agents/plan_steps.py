"""Steps for the offline planner: one maker per step kind, and the builder that chains them.

Internal to ``velocitymesh.agents.planner``. A maker reads one clause (its URLs, files and
names already masked by ``plan_words``) and adds the step — and any step it implies, such as
the fetch before "summarise https://…" — to the :class:`Builder`, which works out ``needs``
and which upstream output the templates read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from velocitymesh.agents.plan_words import PRONOUNS, PY_HINT, SERVICES, MaskedText, ident
from velocitymesh.workspace.spec import Workflow


@dataclass
class Step:
    """A step being planned; ``to_data`` is its place in the workflow document."""

    id: str
    kind: str
    with_: dict[str, Any]
    needs: list[str] = field(default_factory=list)
    map: str | None = None
    what: str = ""  # one line for the explanation
    data: bool = True  # whether later steps read its output
    structured: bool = False  # an llm step with a schema: its output is an object, not text

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.needs:
            out["needs"] = list(self.needs)
        if self.map is not None:
            out["map"] = self.map
        out["with"] = self.with_
        return out


class Builder:
    """The steps planned so far, and what the next one needs (``frontier``) and reads (``sources``).

    With ``current`` (an edit), new steps go after its last step and read its last step that
    produces data.
    """

    def __init__(self, request: str, catalogue: Sequence[Mapping[str, Any]], llm_model: str,
                 current: Workflow | None) -> None:
        self.text = MaskedText(request)
        self.kinds = {str(e["name"]): e for e in catalogue}
        self.llm_model = llm_model
        self.steps: list[Step] = []
        self.taken: set[str] = set()
        self.unmapped: list[str] = []
        self.notes: list[str] = []
        self.inputs: dict[str, Any] = {}
        self.frontier: list[str] = []  # what the next step needs
        self.sources: list[Step] = []  # whose output the next step reads
        self.group_base: list[str] = []  # needs of a parallel group of sources
        self.last_was_source = False
        self.existing: dict[str, Step] = {}
        if current is not None:
            for s in current.steps:
                self.taken.add(s.id)
                self.existing[s.id] = Step(s.id, s.kind, dict(s.with_), list(s.needs),
                                           structured=s.kind == "llm" and "schema" in s.with_)
            if current.steps:
                last = current.steps[-1]
                self.frontier = [last.id]
                readable = [s for s in reversed(current.steps) if s.kind not in ("approval", "branch")
                            and not (s.kind == "http" and str(s.with_.get("method", "GET")).upper() != "GET")]
                self.sources = [self.existing[readable[0].id]] if readable else []

    # -- helpers

    def has(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds

    def config_fields(self, kind: str) -> set[str] | None:
        schema = (self.kinds.get(kind) or {}).get("config")
        if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
            return set(schema["properties"])
        return None

    def new_id(self, base: str) -> str:
        base = ident(base)
        sid, n = base, 2
        while sid in self.taken:
            sid, n = f"{base}_{n}", n + 1
        self.taken.add(sid)
        return sid

    def missing_kind(self, kind: str, clause: str) -> None:
        self.unmapped.append(f"{self.text.unmask(clause)} (needs the {kind} step kind, which is not installed)")

    # -- references to upstream output

    @staticmethod
    def ref(step: Step) -> str:
        """An expression for a step's output, as text for a prompt."""
        if step.kind == "http":
            return f"steps.{step.id}.output.json or steps.{step.id}.output.text"
        if step.kind == "llm":  # the llm step's output is {text, json, model, usage, finish_reason}
            return f"steps.{step.id}.output.json" if step.structured else f"steps.{step.id}.output.text"
        if step.kind == "sql":
            return f"steps.{step.id}.output.rows"
        return f"steps.{step.id}.output"

    @staticmethod
    def value_ref(step: Step) -> str:
        """An expression for a step's output as data (a list or an object)."""
        if step.kind == "http":
            return f"steps.{step.id}.output.json"
        return Builder.ref(step)

    def upstream(self, ids: Sequence[str]) -> set[str]:
        graph = {s.id: s.needs for s in [*self.existing.values(), *self.steps]}
        seen: set[str] = set()
        todo = list(ids)
        while todo:
            sid = todo.pop()
            if sid not in seen:
                seen.add(sid)
                todo.extend(graph.get(sid, []))
        return seen

    def needs_for(self, base: list[str], reads: Sequence[Step]) -> list[str]:
        needs = list(base)
        reachable = self.upstream(needs)
        needs += [s.id for s in reads if s.id not in reachable and s.id not in needs]
        return needs

    # -- adding steps

    def add(self, step: Step, *, source: bool, joiner: str) -> None:
        parallel = source and self.last_was_source and joiner == "and"
        if not parallel:
            self.group_base = list(self.frontier)
        step.needs = self.needs_for(self.group_base if source else list(self.frontier),
                                    [] if source else self.sources)
        self.steps.append(step)
        if parallel:
            self.frontier = [*self.frontier, step.id]
            self.sources = [*self.sources, step]
        else:
            self.frontier = [step.id]
            if step.data:
                self.sources = [step]
        self.last_was_source = source

    def add_get(self, url_token: str, verb_id: str, joiner: str) -> Step:
        url = self.text.values[url_token]
        step = Step(self.new_id(verb_id), "http", {"url": url}, what=f"GET {url}")
        self.add(step, source=True, joiner=joiner)
        return step


def _instruction(clause: str, default: str) -> str:
    """The user's own words as an instruction: "summarise them for a busy engineer" → "Summarise them …"."""
    words = clause.strip(" ,.;:")
    words = re.sub(r"^(?:for\s+(?:each|every|all)\s+\w+\s*,?\s*)", "", words, flags=re.I)
    bare = re.sub(r"\b" + PRONOUNS + r"\b", "", words, flags=re.I)
    if len(bare.split()) <= 1:  # just the verb: say what it means
        words = default
    return words[0].upper() + words[1:]


def _labels(clause: str) -> list[str]:
    m = re.search(r"\b(?:into|as)\s+(?:one\s+of\s+)?(.+)$", clause, re.I)
    if m is None:
        return []
    parts = re.split(r"\s*(?:,|\bor\b|\band\b|/)\s*", m.group(1))
    labels = [re.sub(r"^(?:a|an|the)\s+", "", p.strip(" '\"")).strip() for p in parts]
    labels = [lb for lb in labels if lb and len(lb.split()) <= 3]
    return labels if len(labels) >= 2 else []


def _sql_query(clause: str, table: str) -> tuple[str, bool]:
    """A DuckDB query for the clause over ``table``; False when only ``select *`` could be made."""
    c = clause.lower()
    t = f'"{table}"' if not table.startswith("'") else table

    def col(word: str) -> str:
        return f'"{ident(word)}"'

    m = re.search(r"\btop\s+(\d+)\s+(?:\w+\s+){0,3}?by\s+(\w+)", c)
    if m:
        return f"select * from {t} order by {col(m.group(2))} desc limit {int(m.group(1))}", True
    m = re.search(r"\b(sum|total|average|avg|mean)\s+(?:of\s+)?(?:the\s+)?(\w+)\s+(?:by|per|for\s+each)\s+(\w+)", c)
    if m:
        fn = "sum" if m.group(1) in ("sum", "total") else "avg"
        value, key = col(m.group(2)), col(m.group(3))
        alias = f'"{fn}_{ident(m.group(2))}"'
        return f"select {key}, {fn}({value}) as {alias} from {t} group by {key} order by {alias} desc", True
    m = re.search(r"\b(?:count|number\s+of|group)\b.*?\b(?:by|per|for\s+each)\s+(\w+)", c)
    if m:
        key = col(m.group(1))
        return f'select {key}, count(*) as "count" from {t} group by {key} order by "count" desc', True
    m = re.search(r"\b(sum|total|average|avg|mean)\s+(?:of\s+)?(?:the\s+)?(\w+)", c)
    if m and m.group(2) not in ("rows", "records", "data", "them", "it"):
        fn = "sum" if m.group(1) in ("sum", "total") else "avg"
        return f'select {fn}({col(m.group(2))}) as "{fn}" from {t}', True
    if re.search(r"\bcount\b", c):
        return f'select count(*) as "count" from {t}', True
    return f"select * from {t}", False


def _destination(b: Builder, clause: str) -> tuple[str | None, list[str]]:
    """The URL token a POST goes to, and the other URL tokens of the clause (to fetch first)."""
    urls = b.text.tokens(clause, "u")
    if not urls:
        return None, []
    m = re.search(r"\b(?:to|at|into|on|via)\s+(?:\w+\s+){0,3}?(__u\d+__)", clause, re.I)
    dest = m.group(1) if m else urls[-1]
    return dest, [u for u in urls if u != dest]


def post_step(b: Builder, clause: str, sid: str, joiner: str) -> None:
    dest, others = _destination(b, clause)
    lowered = clause.lower()
    service = next((s for s in SERVICES if s in lowered), None)
    for token in others:
        b.add_get(token, "fetch", joiner)
        joiner = "then"
    if b.text.tokens(clause, "e") or (re.search(r"\be-?mail\b", lowered) and dest is None):
        b.unmapped.append(f"{b.text.unmask(clause)} (there is no e-mail step kind: post to an e-mail API's URL "
                          "with an http step)")
        return
    if dest is not None:
        url = b.text.values[dest]
    elif service is not None:
        secret = f"{ident(service)}_webhook_url"
        url = f"{{{{ secrets.{secret} }}}}"
        b.notes.append(f"set the secret {secret} to the {service} webhook URL: "
                       f"`velocitymesh secrets set {secret}`")
    else:
        b.unmapped.append(f"{b.text.unmask(clause)} (no URL to send to)")
        return
    key = SERVICES.get(service or "", "text")
    source = b.sources[-1] if b.sources else None
    if source is None:  # nothing upstream: the message is the quoted text, or what the clause says to send
        words = b.text.unmask(clause)
        quoted = re.search(r"['\"“](.+?)['\"”]", words)
        said = re.sub(r"^\s*\w+\s+|\s+(?:to|on|in|into|via)\s+(?:the\s+)?(?:\S+\s*){1,3}$", "", words).strip()
        body: dict[str, Any] = {key: quoted.group(1) if quoted else (said[:1].upper() + said[1:] or words)}
        b.notes.append(f"the {sid} step sends a fixed text; edit its json.{key}")
    elif source.kind == "llm" and not source.structured:
        body = {key: f"{{{{ {b.ref(source)} }}}}"}
    elif service is not None:
        body = {key: f"{source.id}: {{{{ {b.value_ref(source)} }}}}"}  # chat services want text
    else:
        body = {"data": f"{{{{ {b.value_ref(source)} }}}}"}
    step = Step(b.new_id(sid), "http",
                 {"url": url, "method": "POST", "json": body},
                 what=f"POST to {url if dest else service}" + (f" with the output of {source.id}" if source else ""))
    b.add(step, source=False, joiner=joiner)


def llm_step(b: Builder, clause: str, sid: str, joiner: str, for_each: bool) -> None:
    if not b.has("llm"):
        b.missing_kind("llm", clause)
        return
    for k, token in enumerate(b.text.tokens(clause, "u")):
        b.add_get(token, "fetch", joiner if k == 0 else "and")
        joiner = "then"
    fields = b.config_fields("llm")
    words = b.text.unmask(clause)
    defaults = {
        "summarise": "Summarise the following in a few short bullet points",
        "summarize": "Summarize the following in a few short bullet points",
        "classify": "Classify the following", "extract": "Extract the key facts from the following as JSON",
        "translate": "Translate the following into English",
    }
    instruction = _instruction(words, defaults.get(sid, f"{sid.capitalize()} the following"))
    config: dict[str, Any] = {"model": b.llm_model}
    labels = _labels(words) if sid in ("classify", "categorise", "categorize", "tag", "label") else []
    structured = False
    if labels and (fields is None or "schema" in fields):
        config["schema"] = {"type": "object", "properties": {"category": {"type": "string", "enum": labels}},
                            "required": ["category"]}
        structured = True
    mapped: str | None = None
    if for_each and b.sources:
        mapped = f"{{{{ {b.value_ref(b.sources[-1])} }}}}"
        data = "{{ item }}"
    elif b.sources:
        data = "\n\n".join(f"{{{{ {b.ref(s)} }}}}" for s in b.sources)
    else:
        b.inputs.setdefault("text", {"type": "string", "description": "The text to work on"})
        data = "{{ inputs.text }}"
    config["prompt"] = f"{instruction}:\n\n{data}"
    what = f"asks {b.llm_model}: “{instruction}”" + (" for each item" if mapped else "")
    step = Step(b.new_id(sid), "llm", config, map=mapped, what=what, structured=structured)
    b.add(step, source=False, joiner=joiner)


def sql_step(b: Builder, clause: str, sid: str, joiner: str) -> None:
    if not b.has("sql"):
        b.missing_kind("sql", clause)
        return
    for k, token in enumerate(b.text.tokens(clause, "u")):
        b.add_get(token, "fetch", joiner if k == 0 else "and")
        joiner = "then"
    files = b.text.tokens(clause, "f")
    config: dict[str, Any] = {}
    if files:
        table = "'" + b.text.values[files[0]].replace("'", "''") + "'"
    elif b.sources and (b.sources[-1].kind != "llm" or b.sources[-1].structured):
        source = b.sources[-1]
        table = source.id
        if source.kind in ("http", "llm"):  # the table is the parsed JSON inside the output
            config["tables"] = {source.id: f"{source.id}.json"}
    else:
        b.unmapped.append(f"{b.text.unmask(clause)} (nothing to query: fetch data first or name a file such as "
                          "sales.csv)")
        return
    query, specific = _sql_query(clause, table)
    if not specific:
        b.notes.append(f"the {sid} step selects every row; edit its query to do what you described")
    step_id = "top" if re.search(r"\btop\s+\d+", clause, re.I) else sid
    step = Step(b.new_id(step_id), "sql", {"query": query, **config}, what=query)
    b.add(step, source=bool(files) and not b.sources, joiner=joiner)


def python_step(b: Builder, clause: str, sid: str, joiner: str, for_each: bool) -> None:
    if not b.has("python"):
        b.missing_kind("python", clause)
        return
    comment = re.sub(r"\s+", " ", b.text.unmask(clause)).replace("\n", " ")
    config: dict[str, Any]
    if b.sources:
        arg = f"{{{{ {b.value_ref(b.sources[-1])} }}}}"
        code = f"def main(data):\n    # TODO: {comment}\n    return data\n"
        config = {"code": code, "args": {"data": arg}}
    else:
        config = {"code": f"def main():\n    # TODO: {comment}\n    return None\n"}
    b.notes.append(f"the {sid} step is a Python skeleton: fill in its main()")
    b.add(Step(b.new_id(sid), "python", config, what="Python skeleton (fill in main)"), source=False, joiner=joiner)


def run_step(b: Builder, clause: str, joiner: str) -> bool:
    """"run the notebook X.ipynb" / "run the workflow X"; False when the clause is neither."""
    files = [t for t in b.text.tokens(clause, "f") if b.text.values[t].endswith(".ipynb")]
    name = re.search(r"\bnotebook\s+(?:called\s+|named\s+)?[\"']?([\w-]+)|\bthe\s+([\w-]+)\s+notebook\b", clause,
                     re.I)
    if files or re.search(r"\bnotebook\b", clause, re.I):
        if not b.has("notebook"):
            b.missing_kind("notebook", clause)
            return True
        if files:
            path = b.text.values[files[0]]
        elif name:
            path = (name.group(1) or name.group(2)) + ".ipynb"
        else:
            b.unmapped.append(f"{b.text.unmask(clause)} (which notebook? name its .ipynb file)")
            return True
        config: dict[str, Any] = {"path": path}
        fields = b.config_fields("notebook")
        if b.sources and (fields is None or "parameters" in fields):
            config["parameters"] = {"data": f"{{{{ {b.value_ref(b.sources[-1])} }}}}"}
        stem = re.sub(r"\.ipynb$", "", path.rsplit("/", 1)[-1])
        b.add(Step(b.new_id(stem or "notebook"), "notebook", config, what=f"runs {path}"),
              source=not b.sources, joiner=joiner)
        return True
    wf = re.search(r"\b(?:the\s+)?(?:workflow|flow)\s+[\"']?([a-z0-9][a-z0-9_-]*)|\bthe\s+([a-z0-9][a-z0-9_-]*)\s+"
                   r"(?:workflow|flow)\b", clause, re.I)
    if wf:
        if not b.has("workflow"):
            b.missing_kind("workflow", clause)
            return True
        target = (wf.group(1) or wf.group(2)).lower()
        b.add(Step(b.new_id(f"run_{target}"), "workflow", {"workflow": target}, what=f"runs workflow {target}"),
              source=False, joiner=joiner)
        return True
    if PY_HINT.search(clause):
        python_step(b, clause, "compute", joiner, False)
        return True
    return False


def approval_step(b: Builder, clause: str, joiner: str) -> None:
    if not b.has("approval"):
        b.missing_kind("approval", clause)
        return
    who = re.search(r"\b(?:from|by)\s+([a-z][\w.-]*)|\b(?:ask|have|let)\s+([a-z][\w.-]*)\s+(?:to\s+)?approve",
                    clause, re.I)
    config: dict[str, Any] = {}
    if b.sources:
        config["message"] = f"Approve the output of {b.sources[-1].id}?"
    approver = (who.group(1) or who.group(2)) if who else None
    if approver and approver.lower() not in ("the", "a", "someone", "me", "us", "them", "it", "human", "person"):
        config["approvers"] = [approver]
    b.add(Step(b.new_id("approve"), "approval", config, what="waits for a person to approve", data=False),
          source=False, joiner=joiner)
