"""The words of a request, for the offline planner: the verb lexicon, masking of URLs and
names, splitting into clauses, and each clause's action word.

Internal to ``velocitymesh.agents.planner``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# lemma → (kind, step id). "get" is a GET, "post" a POST, and so on; the id is what the step is called.
VERBS: dict[str, tuple[str, str]] = {
    **{v: ("get", "fetch") for v in ("fetch", "get", "grab", "pull", "retrieve", "call", "load", "read", "poll",
                                      "hit", "request", "check", "look up", "crawl")},
    "download": ("get", "download"), "scrape": ("get", "scrape"),
    **{v: ("post", v) for v in ("post", "send", "notify", "push", "forward", "deliver", "alert", "ping",
                                 "publish", "share", "report", "upload", "submit", "tell", "message")},
    "email": ("post", "email"), "e-mail": ("post", "email"), "mail": ("post", "email"),
    "sum up": ("llm", "summarise"),
    **{v: ("llm", v) for v in ("summarise", "summarize", "classify", "categorise", "categorize", "extract",
                                "translate", "analyse", "analyze", "rewrite", "draft", "write", "tag", "label",
                                "detect", "generate", "explain", "describe", "answer", "highlight", "rate",
                                "compose", "simplify", "shorten", "paraphrase", "proofread", "identify", "suggest",
                                "recommend", "critique", "score", "compare", "evaluate", "assess", "review")},
    **{v: ("sql", v) for v in ("query", "aggregate", "count", "group", "sum", "total", "average", "join", "sort",
                                "rank", "order", "select")},
    **{v: ("python", v) for v in ("compute", "calculate", "filter", "transform", "clean", "parse", "convert",
                                   "reshape", "normalise", "normalize", "process", "dedupe", "deduplicate",
                                   "merge", "flatten")},
    **{v: ("python", "filter") for v in ("keep", "remove", "exclude", "drop", "flag", "mark")},
    **{v: ("approval", "approve") for v in ("approve",)},
    **{v: ("store", "store") for v in ("store", "save", "persist", "insert", "record", "archive")},
    **{v: ("run", "run") for v in ("run", "execute", "launch", "trigger")},
}
SERVICES = {"slack": "text", "teams": "text", "mattermost": "text", "discord": "content", "google chat": "text"}
PRONOUNS = r"(?:it|them|this|that|these|those|the\s+(?:result|results|response|data|output|items|list|summary))"


def _forms(lemma: str) -> list[str]:
    if " " in lemma:
        return [lemma]
    out = {lemma, lemma + "s", lemma + "ed", lemma + "ing"}
    if lemma.endswith("e"):
        out |= {lemma + "d", lemma[:-1] + "ing"}
    if lemma.endswith("y"):
        out |= {lemma[:-1] + "ies", lemma[:-1] + "ied"}
    if lemma.endswith(("sh", "ch", "x", "ss")):
        out.add(lemma + "es")
    return sorted(out)


LEMMA: dict[str, str] = {form: lemma for lemma in VERBS for form in _forms(lemma)}
_VERB_ALT = "|".join(sorted((re.escape(f).replace(r"\ ", r"\s+") for f in LEMMA), key=len, reverse=True))
VERB_RE = re.compile(rf"\b({_VERB_ALT})\b", re.I)
# Verbs that are nouns as often ("title and score", "orders and total"): a clause starts with one only
# when an object follows it ("and post it to …", "and count the rows by …").
NOUN_VERBS = frozenset({
    "count", "order", "total", "sort", "report", "post", "message", "request", "check", "label", "tag", "score",
    "rank", "group", "sum", "rate", "answer", "select", "draft", "share", "alert", "process", "call", "run", "load",
    "read", "hit", "pull", "ping", "push", "join", "filter", "merge", "query", "parse", "clean", "average", "poll",
    "highlight", "transform", "trigger", "launch", "get", "mail", "drop", "record", "insert", "flag", "mark",
    "review",
})
OBJECT_RE = re.compile(
    r"\s+(?:it|them|this|that|these|those|the|a|an|all|each|every|some|my|our|__[uf]\d+__|to|into|by|per|with|"
    r"up|results?|data|output|rows|items)\b",
    re.I,
)
APPROVAL_RE = re.compile(
    r"\b(?:(?:wait|pause|hold)\s+(?:for|until)\s+(?:an?\s+|the\s+)?(?:approval|sign[- ]?off|a\s+human|someone)"
    r"|(?:ask|get|require|request|need)\s+(?:\w+\s+){0,3}?(?:approval|to\s+approve|sign[- ]?off)"
    r"|(?:have|let)\s+\w+\s+approve|approval\s+step|approve)\b",
    re.I,
)
WEBHOOK_TRIGGER = re.compile(
    r"\b(?:when(?:ever)?|each\s+time|every\s+time)\s+(?:a|the|our)\s+webhook\s+(?:call\s+|request\s+)?"
    r"(?:arrives|fires|comes\s+in|is\s+called|is\s+received|is\s+hit|hits)\b"
    r"|\bon\s+(?:each|every)\s+webhook(?:\s+call|\s+request)?\b"
    r"|\b(?:triggered|started|run)\s+(?:by|from|via)\s+a\s+webhook\b"
    r"|\bvia\s+(?:a\s+)?webhook\s+trigger\b",
    re.I,
)
SQL_HINT = re.compile(r"\b(?:with|using|in|via)\s+(?:sql|duckdb)\b|\bsql\b", re.I)
PY_HINT = re.compile(r"\b(?:with|using|in|via)\s+python\b|\bpython\b", re.I)
TOKEN_RE = re.compile(r"__([ufem])(\d+)__")



@dataclass
class Clause:
    text: str  # masked: URLs, files, emails and model strings are tokens
    joiner: str  # "start", "sentence", "then" or "and"


# --- the text ------------------------------------------------------------------------------


class MaskedText:
    """The request with URLs, file names, e-mail addresses and model strings replaced by tokens,
    so that neither the schedule nor the clause splitting trips on their dots and digits."""

    def __init__(self, text: str) -> None:
        self.values: dict[str, str] = {}
        patterns = [
            ("u", r"\bhttps?://[^\s<>\"')\]]+"),
            ("e", r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
            ("m", r"\b(?:openai|anthropic|compatible):[\w.:/-]+"),
            ("u", r"\b(?:www\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|io|dev|ai|co|app|gov|edu|info|news)"
                  r"(?:/[^\s,;)]*)?"),
            ("f", r"(?<![\w/])[\w./-]+\.(?:ipynb|csv|parquet|jsonl|json|xlsx|tsv)\b"),
        ]
        for kind, pattern in patterns:
            text = re.sub(pattern, lambda m, k=kind: self._token(k, m.group(0)), text, flags=re.I)  # type: ignore[misc]
        self.masked = text

    def _token(self, kind: str, value: str) -> str:
        stripped = value.rstrip(".,;:!?")
        trail = value[len(stripped):]  # a full stop after a URL still ends the sentence
        if kind == "u" and not stripped.lower().startswith(("http://", "https://")):
            stripped = "https://" + stripped
        token = f"__{kind}{len(self.values)}__"
        self.values[token] = stripped
        return token + trail

    def unmask(self, text: str) -> str:
        return TOKEN_RE.sub(lambda m: self.values.get(m.group(0), m.group(0)), text)

    def tokens(self, text: str, kind: str) -> list[str]:
        return [m.group(0) for m in TOKEN_RE.finditer(text) if m.group(1) == kind]


_PREAMBLE = re.compile(
    r"^\s*(?:please\s+)?(?:(?:can|could|would)\s+you\s+(?:please\s+)?)?"
    r"(?:(?:create|make|build|set\s+up|write|generate|give\s+me|i\s+(?:want|need|would\s+like)|i'd\s+like)\s+"
    r"(?:me\s+)?(?:a|an)\s+(?:\w+\s+)?(?:workflow|flow|pipeline|job|automation|bot)\s*(?:that|which|to|for)?\s*"
    r"|(?:i\s+want\s+to|i\s+need\s+to|i'd\s+like\s+to|let's|please)\s+)?",
    re.I,
)
_THEN = re.compile(
    r"\s*,?\s*\b(?:and\s+then|and\s+finally|then|after\s+that|afterwards|finally|once\s+done)\b\s*,?\s*", re.I
)


_AND = re.compile(r"\s*(?:,\s*(?:and\s+)?|\band\s+|&\s*|\bplus\s+)(?:also\s+)?", re.I)


def _starts_action(rest: str) -> bool:
    """Whether the words after an "and" or a comma begin a new action."""
    if re.match(r"for\s+(?:each|every|all)\b|(?:only\s+)?(?:if|unless|when|in\s+case)\b", rest, re.I):
        return True
    if APPROVAL_RE.match(rest):
        return True
    m = VERB_RE.match(rest)
    if m is None:
        return False
    lemma = LEMMA[re.sub(r"\s+", " ", m.group(1).lower())]
    return lemma not in NOUN_VERBS or bool(OBJECT_RE.match(rest[m.end():]))


def _split_and(part: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    for m in _AND.finditer(part):
        if m.start() > start and _starts_action(part[m.end():]):
            pieces.append(part[start:m.start()])
            start = m.end()
    pieces.append(part[start:])
    return pieces


def clauses(masked: str) -> list[Clause]:
    out: list[Clause] = []
    sentences = [s for s in re.split(r"(?<=[.!?;])\s+|\n+", masked) if s.strip()]
    for n, sentence in enumerate(sentences):
        sentence = _PREAMBLE.sub("", sentence.strip(" .!?;,"), count=1)
        for k, part in enumerate(_THEN.split(sentence)):
            for j, piece in enumerate(_split_and(part)):
                piece = re.sub(r"^(?:and|also|then|plus)\b\s*", "", piece.strip(" ,.;:"), flags=re.I)
                if not piece:
                    continue
                joiner = "and" if j else ("then" if k else ("sentence" if n else "start"))
                out.append(Clause(piece, joiner))
    return out


def first_verb(clause: str) -> tuple[str, str, str] | None:
    """(kind, id, surface) of the clause's first action word.

    A word that is as often a noun ("if the rate drops …") counts only first in the clause or
    with an object after it.
    """
    approval = APPROVAL_RE.search(clause)
    verb = None
    for m in VERB_RE.finditer(clause):
        lemma = LEMMA[re.sub(r"\s+", " ", m.group(1).lower())]
        if lemma not in NOUN_VERBS or not clause[: m.start()].strip() or OBJECT_RE.match(clause[m.end():]):
            verb = m
            break
    if approval and (verb is None or approval.start() <= verb.start()):
        return "approval", "approve", approval.group(0)
    if verb is None:
        return None
    kind, sid = VERBS[LEMMA[re.sub(r"\s+", " ", verb.group(1).lower())]]
    return kind, sid, verb.group(1)




def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:50].rstrip("-") or "generated"


def ident(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]+", "_", text.strip()).strip("_").lower()
    return s if re.match(r"^[a-z_]", s) else f"c_{s}" if s else "value"
