"""Natural-language generation: parse + repair of malformed model answers, and the offline planner.

1. Over the malformed answers of ``generate_corpus/answers.yaml`` (fenced, prose-wrapped,
   truncated, wrapped in {"workflow": …}, missing fields, unknown kinds, cycles, references
   to missing steps, wrong types …), ``generate()`` runs with a scripted model whose later
   answers are its repairs — and it moves to a repair only when the repair message it was
   sent names what is wrong. Measured: the share of repairable cases that end valid, that
   the rounds match, and the number of invalid specs accepted — every accepted spec is
   re-validated independently, from its YAML, by the same validator.
2. Over the plain-language requests of ``generate_corpus/requests.yaml``, the share the
   offline planner maps to the expected step kinds (http with its method), DAG edges and
   schedule (cron compared by fire times, and timezone).

Step kinds the corpus names but this install lacks (``notebook`` until it lands) are given
stand-ins so the planner can be measured on them; the output says which.

Prints a table and one JSON line. Usage: python bench/generate.py [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

CORPUS = Path(__file__).with_name("generate_corpus")
PLANNER_KINDS = ("notebook",)  # kinds the planner may emit that are not built in yet


def stand_in_kinds() -> dict[str, Any]:
    """Stand-ins (same config fields as the design's) for kinds this install lacks."""
    from pydantic import Field

    from velocitymesh.flows.steps import StepConfig, StepKind, StepResult, kinds

    class NotebookConfig(StepConfig):
        path: str
        parameters: dict[str, Any] = Field(default_factory=dict)

    async def never(config: Any, ctx: Any) -> StepResult:
        raise RuntimeError("a benchmark stand-in does not run")

    made = {"notebook": StepKind("notebook", NotebookConfig, never, "Run a Jupyter notebook with papermill "
                                 "(`path`, `parameters`).")}
    return {k: v for k, v in made.items() if k not in kinds()}


def wiring() -> tuple[Any, list[dict[str, Any]], list[str]]:
    """(validate, catalogue, stand-in names): the registry's kinds plus the stand-ins."""
    from velocitymesh.flows.generation import catalogue
    from velocitymesh.flows.steps import kinds
    from velocitymesh.workspace.validate import parse_and_validate

    extra = stand_in_kinds()
    all_kinds = {**kinds(), **extra}

    def validate(data: Any) -> Any:
        return parse_and_validate(data, kinds=all_kinds)

    entries = catalogue() + [{"name": k.name, "description": k.description,
                              "config": k.config.model_json_schema(by_alias=True)} for k in extra.values()]
    return validate, entries, sorted(extra)


# --- 1. parse + repair ----------------------------------------------------------------------


def scripted_model(case: dict[str, Any]) -> Any:
    from velocitymesh.agents.providers.base import CompletionRequest, CompletionResponse, Model, OnToken, Usage

    class CorpusModel(Model):
        """Answers from the case's script; moves to the next answer only when told what to fix."""

        provider = "fake"  # fake: models cost $0 in the price table

        def __init__(self) -> None:
            self.name = f"corpus-{case['id']}"
            self.answers: list[dict[str, Any]] = case["answers"]
            self.pos = -1

        async def complete(self, request: CompletionRequest, *, on_token: OnToken | None = None) -> CompletionResponse:
            feedback = request.messages[-1].content or "" if self.pos >= 0 else ""
            nxt = self.pos + 1
            if nxt < len(self.answers) and all(r in feedback for r in self.answers[nxt].get("requires", [])):
                self.pos = nxt
            answer = self.answers[max(self.pos, 0)]
            text = answer.get("text", "")
            if case.get("crlf"):
                text = text.replace("\n", "\r\n")
            return CompletionResponse(
                text=text,
                finish_reason=answer.get("finish_reason", "stop"),
                usage=Usage(len(request.prompt_text()) // 4, max(len(text) // 4, 1)),
                model=self.name,
            )

    return CorpusModel()


def independently_valid(spec: Any, yaml_text: str | None, validate: Any) -> bool:
    """Re-validate an accepted spec from scratch: its YAML as text, and the object itself."""
    from velocitymesh.workspace.yamlio import dump_workflow

    if yaml_text is None or yaml_text != dump_workflow(spec):
        return False
    for doc in (yaml_text, spec.to_data()):
        wf, problems = validate(doc)
        if wf is None or any(p.severity == "error" for p in problems):
            return False
    return True


async def run_repairs(validate: Any, catalogue: list[dict[str, Any]], verbose: bool) -> dict[str, Any]:
    from velocitymesh.agents.generate import generate

    cases = yaml.safe_load((CORPUS / "answers.yaml").read_text(encoding="utf-8"))
    rows: list[dict[str, Any]] = []
    for case in cases:
        result = await generate(case.get("request", "a workflow"), validate=validate, catalogue=catalogue,
                                model=scripted_model(case), examples=[])
        ok = result.spec is not None
        accepted_invalid = ok and not independently_valid(result.spec, result.yaml, validate)
        expect = case["expect"]
        rows.append({"id": case["id"], "category": case["category"], "valid": ok, "expected": expect["valid"],
                     "rounds": result.rounds, "expected_rounds": expect.get("rounds"),
                     "accepted_invalid": accepted_invalid,
                     "left": [str(p) for p in result.errors][:2]})
        if verbose and (ok != expect["valid"] or result.rounds != expect.get("rounds")):
            print(f"  miss {case['id']}: valid={ok} rounds={result.rounds} left={rows[-1]['left']}", file=sys.stderr)
    return {"rows": rows, "cases": len(cases)}


# --- 2. the offline planner -----------------------------------------------------------------


def kind_label(step: Any) -> str:
    if step.kind == "http":
        return f"http:{str(step.with_.get('method', 'GET')).upper()}"
    return str(step.kind)


def fire_times(cron: str, tz: str, n: int = 40) -> list[datetime]:
    from zoneinfo import ZoneInfo

    from croniter import croniter

    it = croniter(cron, datetime(2026, 1, 1, tzinfo=ZoneInfo(tz)))
    return [it.get_next(datetime) for _ in range(n)]


def compare_plan(case: dict[str, Any], result: Any) -> list[str]:
    """What differs from the expectation ([] = a match)."""
    spec = result.spec
    if spec is None:
        return ["no valid spec: " + "; ".join(str(p) for p in result.errors[:2])]
    misses: list[str] = []
    got_kinds = [kind_label(s) for s in spec.steps]
    if got_kinds != case["kinds"]:
        misses.append(f"kinds {got_kinds} != {case['kinds']}")
    index = {s.id: i for i, s in enumerate(spec.steps)}
    edges = sorted([index[n], i] for i, s in enumerate(spec.steps) for n in s.needs)
    if edges != sorted(case["edges"]):
        misses.append(f"edges {edges} != {sorted(case['edges'])}")
    schedule = spec.trigger.schedule
    want = case.get("cron")
    if (schedule is None) != (want is None):
        misses.append(f"schedule {schedule.cron if schedule else None!r} != {want!r}")
    elif schedule is not None and want is not None:
        tz = case.get("timezone", "UTC")
        if schedule.timezone != tz:
            misses.append(f"timezone {schedule.timezone} != {tz}")
        elif fire_times(schedule.cron, tz) != fire_times(want, tz):
            misses.append(f"cron {schedule.cron!r} != {want!r}")
    if bool(case.get("webhook")) != (spec.trigger.webhook is not None):
        misses.append(f"webhook trigger {spec.trigger.webhook is not None} != {bool(case.get('webhook'))}")
    return misses


async def run_planner(validate: Any, catalogue: list[dict[str, Any]]) -> dict[str, Any]:
    from velocitymesh.agents.generate import generate

    cases = yaml.safe_load((CORPUS / "requests.yaml").read_text(encoding="utf-8"))
    rows = []
    started = time.perf_counter()
    for case in cases:
        result = await generate(case["request"], validate=validate, catalogue=catalogue, offline=True)
        misses = compare_plan(case, result)
        accepted_invalid = result.spec is not None and not independently_valid(result.spec, result.yaml, validate)
        rows.append({"request": case["request"], "misses": misses, "unmapped": result.unmapped,
                     "accepted_invalid": accepted_invalid})
    return {"rows": rows, "ms_per_request": (time.perf_counter() - started) / len(cases) * 1000}


# --- report ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--verbose", action="store_true", help="list every miss")
    args = ap.parse_args()
    validate, catalogue, stand_ins = wiring()
    repairs = asyncio.run(run_repairs(validate, catalogue, args.verbose))
    planner = asyncio.run(run_planner(validate, catalogue))

    rows = repairs["rows"]
    repairable = [r for r in rows if r["expected"]]
    unrepairable = [r for r in rows if not r["expected"]]
    repaired = sum(r["valid"] for r in repairable)
    rejected = sum(not r["valid"] for r in unrepairable)
    rounds_ok = sum(r["rounds"] == r["expected_rounds"] for r in rows)
    accepted_invalid = sum(r["accepted_invalid"] for r in rows) + sum(r["accepted_invalid"] for r in planner["rows"])
    by_cat: Counter[str] = Counter(r["category"] for r in rows)
    ok_cat: Counter[str] = Counter(r["category"] for r in rows if r["valid"] == r["expected"])

    print(f"{'malformed answers':<26} {'cases':>6} {'as expected':>12} {'rounds as expected':>19}")
    for cat in ("parse", "repair", "multi-round", "unrepairable"):
        rc = sum(r["rounds"] == r["expected_rounds"] for r in rows if r["category"] == cat)
        print(f"{cat:<26} {by_cat[cat]:>6} {ok_cat[cat]:>12} {rc:>19}")
    print(f"{'all':<26} {len(rows):>6} {sum(ok_cat.values()):>12} {rounds_ok:>19}")
    print(f"repairable turned valid:   {repaired}/{len(repairable)} ({repaired / len(repairable):.1%})   "
          f"unrepairable rejected: {rejected}/{len(unrepairable)}   invalid specs accepted: {accepted_invalid}")
    for r in rows:
        if r["valid"] != r["expected"] or r["rounds"] != r["expected_rounds"]:
            print(f"  miss: {r['id']} valid={r['valid']} rounds={r['rounds']} (expected {r['expected_rounds']}) "
                  f"{r['left']}")

    prow = planner["rows"]
    mapped = sum(not r["misses"] for r in prow)
    print()
    print(f"{'offline planner':<26} {'requests':>8} {'mapped':>7} {'share':>7}")
    print(f"{'kinds + DAG + schedule':<26} {len(prow):>8} {mapped:>7} {mapped / len(prow):>7.1%}")
    for r in prow:
        if r["misses"]:
            print(f"  miss: {r['request'][:90]}")
            for m in r["misses"]:
                print(f"        {m}")
    if stand_ins:
        print(f"note: stand-ins used for step kinds not installed: {', '.join(stand_ins)}")

    print(json.dumps({
        "bench": "generate",
        "repair": {"cases": len(rows), "repairable": len(repairable), "repaired": repaired,
                   "repair_rate": round(repaired / len(repairable), 4), "unrepairable": len(unrepairable),
                   "unrepairable_rejected": rejected, "rounds_as_expected": rounds_ok},
        "planner": {"requests": len(prow), "mapped": mapped, "share": round(mapped / len(prow), 4),
                    "ms_per_request": round(planner["ms_per_request"], 2)},
        "invalid_specs_accepted": accepted_invalid,
        "stand_in_kinds": stand_ins,
        "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
