"""The CLI through Typer's runner (and a real subprocess for exit codes and start-up)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from velocitymesh.cli import app
from velocitymesh.settings import get_settings

runner = CliRunner()

GOOD = """
name: hello
inputs:
  who: {type: string, default: world}
steps:
  - id: greet
    kind: transform
    with: {value: "hello {{ inputs.who }}"}
  - id: shout
    kind: transform
    needs: [greet]
    with: {value: "{{ steps.greet.output | upper }}"}
"""

BAD = """
name: broken
steps:
  - id: a
    kind: htp
    needs: [b]
  - id: b
    kind: transform
    needs: [a]
    with: {value: 1}
"""


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def invoke(*args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def test_validate_ok_and_problems(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    assert invoke("validate", "good.yaml").exit_code == 0
    res = invoke("validate", "bad.yaml", "--json")
    assert res.exit_code == 1
    problems = json.loads(res.stdout)
    assert all(set(p) == {"path", "message", "hint", "severity"} for p in problems)
    paths = {p["path"] for p in problems}
    assert "steps[0].kind" in paths
    assert any("cycle" in p["message"] for p in problems)


def test_validate_garbage_never_tracebacks(tmp_path: Path) -> None:
    for i, text in enumerate(["{", "- 1\n- 2", "name: [", "\x00\x01", "name: x\nsteps: 5", ""]):
        p = tmp_path / f"g{i}.yaml"
        p.write_text(text)
        res = invoke("validate", str(p))
        assert res.exit_code == 1, text
        assert "Traceback" not in res.output


def test_run_json_and_inputs(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    res = invoke("run", "good.yaml", "--input", "who=ada", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["status"] == "succeeded"
    assert body["steps"]["shout"] == {"status": "succeeded", "output": "HELLO ADA", "error": None}
    assert set(body) >= {"run_id", "status", "steps"}

    listed = invoke("runs", "list", "--json")
    assert json.loads(listed.stdout)[0]["run_id"] == body["run_id"]
    shown = invoke("runs", "show", body["run_id"][:8], "--json")
    assert json.loads(shown.stdout)["steps"]["greet"]["output"] == "hello ada"


def test_run_failure_exit_code_and_resume(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text("""
name: fails
steps:
  - id: a
    kind: transform
    with: {value: 1}
  - id: b
    kind: transform
    needs: [a]
    with: {jmespath: "foo(", data: 1}
""")
    res = invoke("run", "f.yaml", "--json")
    # jmespath syntax is caught by validation
    assert res.exit_code == 1
    (tmp_path / "g.yaml").write_text("""
name: fails2
steps:
  - id: a
    kind: transform
    with: {value: [1]}
  - id: b
    kind: transform
    needs: [a]
    with: {value: "{{ steps.a.output.missing.deeper }}"}
""")
    res = invoke("run", "g.yaml", "--json")
    assert res.exit_code == 1
    body = json.loads(res.stdout)
    assert body["status"] == "failed"
    assert body["steps"]["a"]["status"] == "succeeded"
    assert body["steps"]["b"]["error"]["message"]
    resumed = invoke("resume", body["run_id"])
    assert resumed.exit_code == 1  # still fails, but cleanly


def test_unknown_input_is_exit_1_with_hint(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    res = invoke("run", "good.yaml", "--input", "nope=1")
    assert res.exit_code == 1
    assert "declared inputs: who" in res.output


def test_workflows_save_list_history_diff_restore(tmp_path: Path) -> None:
    p = tmp_path / "good.yaml"
    p.write_text(GOOD)
    assert invoke("workflows", "save", str(p), "-m", "first").exit_code == 0
    p.write_text(GOOD.replace("default: world", "default: team"))
    assert invoke("workflows", "save", str(p), "-m", "second").exit_code == 0
    listed = json.loads(invoke("workflows", "list", "--json").stdout)
    assert listed[0]["name"] == "hello" and listed[0]["version"] == 2
    hist = invoke("workflows", "history", "hello")
    assert "first" in hist.output and "second" in hist.output
    diff = invoke("workflows", "diff", "hello", "1", "2")
    assert "-    default: world" in diff.output and "+    default: team" in diff.output
    assert invoke("workflows", "restore", "hello", "1").exit_code == 0
    assert "default: world" in invoke("workflows", "show", "hello").output
    res = invoke("run", "hello", "--json")
    assert json.loads(res.stdout)["steps"]["greet"]["output"] == "hello world"
    missing = invoke("run", "helo")
    assert missing.exit_code == 1 and "hello" in missing.output  # suggests the close name


def test_secrets_from_stdin_never_printed(tmp_path: Path) -> None:
    canary = "s3cr3t-canary-value"
    res = invoke("secrets", "set", "api_token", input=canary + "\n")
    assert res.exit_code == 0 and canary not in res.output
    res = invoke("secrets", "list")
    assert res.output.strip() == "api_token"
    (tmp_path / "s.yaml").write_text("""
name: uses-secret
steps:
  - id: a
    kind: transform
    with: {value: "{{ secrets.api_token }}"}
""")
    res = invoke("run", "s.yaml", "--json")
    assert res.exit_code == 0
    assert canary not in res.output
    shown = invoke("runs", "show", json.loads(res.stdout)["run_id"], "--json")
    assert canary not in shown.output
    db = (tmp_path / "home" / "velocitymesh.db").read_bytes()
    assert canary.encode() not in db


def test_approve_from_cli(tmp_path: Path) -> None:
    res = invoke("init", ".")
    assert res.exit_code == 0
    res = invoke("run", "workflows/release-approval.yaml", "--json")
    body = json.loads(res.stdout)
    assert body["status"] == "waiting"
    res = invoke("runs", "approve", body["run_id"], "approve", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "succeeded"


def test_schema_and_db_upgrade() -> None:
    schema = json.loads(invoke("schema").stdout)
    assert schema["title"] == "VelocityMesh workflow"
    assert "steps" in schema["properties"]
    assert invoke("db", "upgrade").exit_code == 0
    assert invoke("db", "upgrade").exit_code == 0


def test_demo_runs_on_embedded_defaults() -> None:
    res = invoke("demo")
    assert res.exit_code == 0, res.output
    assert "succeeded" in res.output


def test_subprocess_usage_exit_code_and_no_traceback(tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "velocitymesh.cli"]
    res = subprocess.run([*exe, "run"], capture_output=True, text=True)
    assert res.returncode == 2
    res = subprocess.run([*exe, "run", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr


def test_messages_with_brackets_print_verbatim(tmp_path: Path) -> None:
    """Hints like `needs: [a, b]` must not be eaten as terminal markup."""
    (tmp_path / "w.yaml").write_text("""
name: w
steps:
  - id: a
    kind: transform
    with: {value: 1}
  - id: b
    kind: transform
    with: {value: "{{ steps.a.output }}"}
""")
    res = invoke("validate", "w.yaml")
    assert res.exit_code == 1
    assert "needs: [a]" in res.output
