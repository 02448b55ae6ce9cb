"""``velocitymesh generate``: offline by default, a scripted model through the registry with --model,
--edit diffs, --save only when valid, --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from velocitymesh.agents.providers import register_provider
from velocitymesh.agents.providers.base import CompletionRequest, CompletionResponse, Model, OnToken, Usage
from velocitymesh.cli import app
from velocitymesh.settings import get_settings
from velocitymesh.workspace.yamlio import load_workflow_text

runner = CliRunner()

REQUEST = "every weekday at 9 fetch https://example.com/a.json and post it to https://example.com/hook"
GOOD = "```yaml\nname: ping\nsteps:\n  - {id: call, kind: http, with: {url: \"https://example.com/health\"}}\n```\nPings."
BAD = GOOD.replace("kind: http", "kind: htp")


class CliScript(Model):
    provider = "cligen"

    def __init__(self, name: str) -> None:
        self.name = name
        self.replies: list[str] = []
        self.requests: list[CompletionRequest] = []

    async def complete(self, request: CompletionRequest, *, on_token: OnToken | None = None) -> CompletionResponse:
        self.requests.append(request)
        return CompletionResponse(text=self.replies.pop(0), usage=Usage(1000, 500), model=self.model_string)


MODELS: dict[str, CliScript] = {}
register_provider("cligen", lambda name, settings: MODELS.setdefault(name, CliScript(name)))


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VM_HOME", str(tmp_path / "home"))
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "VM_COMPATIBLE_BASE_URL", "VM_DEFAULT_MODEL", "VM_PRICES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    MODELS.clear()
    yield tmp_path
    get_settings.cache_clear()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_offline_by_default_yaml_on_stdout() -> None:
    res = invoke("generate", REQUEST)
    assert res.exit_code == 0, res.stderr
    wf = load_workflow_text(res.stdout)
    assert [s.kind for s in wf.steps] == ["http", "http"]
    assert wf.trigger.schedule is not None and wf.trigger.schedule.cron == "0 9 * * 1-5"
    assert "no model provider is configured" in res.stderr and "OPENAI_API_KEY" in res.stderr
    assert "offline planner" in res.stderr and "cost: $0" in res.stderr
    assert "Runs at 09:00 on weekdays (UTC)." in res.stderr


def test_json_output() -> None:
    res = invoke("generate", REQUEST, "--json")
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    assert out["valid"] is True and out["source"] == "offline" and out["saved"] is None
    assert out["spec"]["steps"][1]["with"]["method"] == "POST"
    assert set(out) >= {"yaml", "explanation", "problems", "cost_usd", "rounds", "diff", "unmapped", "note"}


def test_save_only_when_valid() -> None:
    res = invoke("generate", REQUEST, "--save")
    assert res.exit_code == 0 and "saved fetch-post v1" in res.stderr
    shown = invoke("workflows", "show", "fetch-post")
    assert shown.stdout == res.stdout

    bad = invoke("generate", "make me a sandwich", "--save", "--json")
    assert bad.exit_code == 1
    out = json.loads(bad.stdout)
    assert out["valid"] is False and out["saved"] is None and out["yaml"] is None
    assert out["unmapped"] == ["make me a sandwich"]
    names = [w["name"] for w in json.loads(invoke("workflows", "list", "--json").stdout)]
    assert names == ["fetch-post"]


def test_invalid_result_says_nothing_was_saved() -> None:
    res = invoke("generate", "make me a sandwich")
    assert res.exit_code == 1 and res.stdout == ""
    assert "nothing was saved" in res.stderr and "Not understood (left out): make me a sandwich" in res.stderr


def test_edit_prints_a_diff_against_the_saved_version() -> None:
    assert invoke("generate", REQUEST, "--save").exit_code == 0
    res = invoke("generate", "every day at 7 in Europe/Paris", "--edit", "fetch-post", "--save")
    assert res.exit_code == 0, res.stderr
    assert "changes to fetch-post:" in res.stderr
    assert "-    cron: 0 9 * * 1-5" in res.stderr and "+    cron: 0 7 * * *" in res.stderr
    assert "saved fetch-post v2" in res.stderr
    missing = invoke("generate", "every day", "--edit", "nope")
    assert missing.exit_code == 1 and "no workflow named 'nope'" in missing.stderr


def test_model_repairs_through_the_registry_and_reports_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VM_PRICES", json.dumps({"cligen:m": {"input": 1.0, "output": 2.0}}))
    MODELS["m"] = model = CliScript("m")
    model.replies = [BAD, GOOD]
    res = invoke("generate", "check the health endpoint", "--model", "cligen:m")
    assert res.exit_code == 0, res.stderr
    assert load_workflow_text(res.stdout).name == "ping"
    assert "Pings." in res.stderr and "no model provider" not in res.stderr
    assert "cost: $0.0040 (2 model calls to cligen:m)" in res.stderr
    assert "did you mean 'http'?" in (model.requests[1].messages[-1].content or "")


def test_model_that_never_fixes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    MODELS["m"] = model = CliScript("m")
    model.replies = [BAD] * 4
    res = invoke("generate", "check the health endpoint", "--model", "cligen:m", "--save")
    assert res.exit_code == 1 and res.stdout == ""
    assert "unknown step kind 'htp'" in res.stderr and "the last draft (not valid, not saved)" in res.stderr
    assert json.loads(invoke("workflows", "list", "--json").stdout) == []


def test_dollar_budget_without_a_price_sends_nothing() -> None:
    MODELS["m"] = model = CliScript("m")
    model.replies = [GOOD]
    res = invoke("generate", "check the health endpoint", "--model", "cligen:m", "--budget", "0.01")
    assert res.exit_code == 1
    assert "no price is known for cligen:m" in res.stderr and "VM_PRICES" in res.stderr
    assert model.requests == []


def test_unknown_provider_is_a_clean_error() -> None:
    res = invoke("generate", "anything", "--model", "nosuch:model")
    assert res.exit_code == 1 and "unknown model provider 'nosuch'" in res.stderr
