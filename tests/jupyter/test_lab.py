"""`velocitymesh lab`: its options and the kernelspec logic (no JupyterLab is started)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from velocitymesh.jupyter import kernel


def test_lab_help() -> None:
    from velocitymesh.cli import app

    result = CliRunner().invoke(app, ["lab", "--help"])
    assert result.exit_code == 0
    assert "JupyterLab" in result.stdout and "--dir" in result.stdout and "--port" in result.stdout


def test_kernelspec_is_installed_once_and_repaired(tmp_path: Path) -> None:
    assert not kernel.kernelspec_ok(tmp_path)
    folder = kernel.ensure_kernelspec(tmp_path)
    assert folder == tmp_path / "share" / "jupyter" / "kernels" / "velocitymesh"
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and "ipykernel_launcher" in spec["argv"]
    assert spec["display_name"] == "Python (VelocityMesh)" and kernel.kernelspec_ok(tmp_path)
    stamp = (folder / "kernel.json").stat().st_mtime_ns
    kernel.ensure_kernelspec(tmp_path)  # present and right: left alone
    assert (folder / "kernel.json").stat().st_mtime_ns == stamp
    spec["argv"][0] = "/old/venv/bin/python"  # a venv that moved: reinstalled
    (folder / "kernel.json").write_text(json.dumps(spec))
    assert not kernel.kernelspec_ok(tmp_path)
    kernel.ensure_kernelspec(tmp_path)
    assert kernel.kernelspec_ok(tmp_path)


def test_lab_command_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert kernel.notebook_dir(Path(".velocitymesh")) == tmp_path
    assert kernel.notebook_dir(tmp_path / "project" / ".velocitymesh") == tmp_path / "project"
    assert kernel.notebook_dir(tmp_path / "state") == tmp_path  # not the usual name: the current folder
    cmd = kernel.lab_command(tmp_path, port=8899, browser=False, extra=["--ServerApp.token=x"])
    assert cmd[:4] == [sys.executable, "-m", "jupyter", "lab"]
    assert f"--notebook-dir={tmp_path}" in cmd and "--MappingKernelManager.default_kernel_name=velocitymesh" in cmd
    assert cmd[-3:] == ["--port=8899", "--no-browser", "--ServerApp.token=x"]
    assert kernel.lab_environment(Path(".velocitymesh"))["VM_HOME"] == str(tmp_path / ".velocitymesh")


def test_lab_runs_jupyter_with_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from velocitymesh.cli import app
    from velocitymesh.settings import get_settings

    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(kernel, "ensure_kernelspec", lambda prefix=None: tmp_path / "velocitymesh")
    monkeypatch.setattr("subprocess.call", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.setenv("VM_HOME", str(tmp_path / "ws" / ".velocitymesh"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["lab", "--no-browser", "--ServerApp.port_retries=0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    ((cmd, env),) = calls
    assert f"--notebook-dir={tmp_path / 'ws'}" in cmd and cmd[-1] == "--ServerApp.port_retries=0"
    assert env["VM_HOME"] == str(tmp_path / "ws" / ".velocitymesh")
