"""`velocitymesh up`, `serve`, `users`, `tokens` and `webhook sign` — through their functions and
Typer's runner (uvicorn replaced), plus one real `velocitymesh serve` in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import velocitymesh.cli.server as server_cli
from velocitymesh.cli import app
from velocitymesh.settings import Settings, get_settings
from velocitymesh.workspace import store

runner = CliRunner()


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VM_PYTHON_ISOLATION", "process")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_serve(application: Any, host: str, port: int, **kw: Any) -> None:
        calls.append({"app": application, "host": host, "port": port, **kw})

    monkeypatch.setattr(server_cli, "serve_app", fake_serve)
    return calls


def invoke(*args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def test_up_seeds_once_and_prints_the_login(served: list[dict[str, Any]]) -> None:
    r = invoke("up", "--port", "8765")
    assert r.exit_code == 0, r.output
    assert "http://127.0.0.1:8765" in r.output and "log in as admin" in r.output
    password = r.output.split("one-time password")[1].split()[0]
    assert len(password) >= 12
    assert served[0]["host"] == "127.0.0.1" and served[0]["port"] == 8765
    services = served[0]["app"].state.services
    with services.session() as s:
        names = [w.name for w in store.list_workflows(s, services.workspace.id)]
        runs = store.list_runs(s, services.workspace.id)
        assert store.verify_password(s, "admin", password) is not None
    assert "sales-report" in names and len(runs) == 1 and runs[0].status == "succeeded"

    again = invoke("up")
    assert again.exit_code == 0 and "one-time password" not in again.output
    assert "demo workspace" not in again.output and "http://127.0.0.1:8080" in again.output


def test_up_takes_the_admin_password_from_the_environment(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VM_ADMIN_PASSWORD", "from the environment")
    r = invoke("up", "--no-demo")
    assert r.exit_code == 0 and "password in VM_ADMIN_PASSWORD" in r.output and "from the environment" not in r.output
    services = served[0]["app"].state.services
    with services.session() as s:
        assert store.verify_password(s, "admin", "from the environment") is not None
        assert store.list_workflows(s, services.workspace.id) == []


def test_serve_refuses_production_without_a_key(served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VM_ENV", "production")
    r = runner.invoke(app, ["serve"])
    assert r.exit_code == 1 and "VM_SECRET_KEY" in r.output and not served


def test_serve_listens_on_port_from_the_environment(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "9123")
    r = invoke("serve")
    assert r.exit_code == 0, r.output
    assert served[0]["host"] == "0.0.0.0" and served[0]["port"] == 9123 and served[0]["behind_proxy"] is True
    assert "no users yet" in r.output
    services = served[0]["app"].state.services
    with services.session() as s:
        assert store.list_workflows(s, services.workspace.id) == []  # no demo data
    assert server_cli.serve_port(Settings(), 7000) == 7000
    monkeypatch.setenv("PORT", "not-a-port")
    assert runner.invoke(app, ["serve"]).exit_code == 1


def test_users_tokens_and_webhook_sign(tmp_path: Path) -> None:
    r = invoke("users", "create", "carol", "--role", "owner", "--password-stdin", input="a long password\n")
    assert r.exit_code == 0 and "carol" in r.output and "password:" not in r.output
    r = invoke("users", "create", "dave")
    assert r.exit_code == 0 and "password:" in r.output
    assert "dave\teditor" in invoke("users", "list").output
    assert invoke("users", "set-role", "dave", "viewer").exit_code == 0
    assert runner.invoke(app, ["users", "set-role", "dave", "king"]).exit_code == 2
    token = invoke("tokens", "create", "--user", "carol", "--name", "ci").stdout.strip().splitlines()[-1]
    assert token.startswith("vm_")
    listing = invoke("tokens", "list", "--user", "carol").output
    assert token[:10] in listing and token not in listing

    (tmp_path / "hook.yaml").write_text("name: hook\ntrigger: {webhook: {}}\nsteps:\n"
                                        "  - {id: a, kind: transform, with: {value: 1}}\n")
    assert invoke("workflows", "save", str(tmp_path / "hook.yaml")).exit_code == 0
    assert invoke("secrets", "set", "webhook:hook", input="hook-secret\n").exit_code == 0
    (tmp_path / "body.json").write_text('{"x": 1}')
    out = invoke("webhook", "sign", "hook", "--body", str(tmp_path / "body.json"), "--timestamp", "1700000000").output
    from velocitymesh.server.webhooks import sign

    expected = sign("hook-secret", 1700000000, (tmp_path / "body.json").read_bytes())
    assert out.splitlines() == ["X-VM-Timestamp: 1700000000", f"X-VM-Signature: {expected}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_in_a_subprocess(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VM_")}
    env.update({"VM_HOME": str(tmp_path / "served"), "PORT": str(port), "VM_LOG_LEVEL": "WARNING"})
    proc = subprocess.Popen([sys.executable, "-m", "velocitymesh.cli", "serve", "--host", "127.0.0.1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "velocitymesh serve did not answer within 90 s"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/workflows", timeout=5).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
