"""The ``velocitymesh`` Jupyter kernel and the ``velocitymesh lab`` command line.

``velocitymesh lab`` must open notebooks on a kernel that can ``import velocitymesh``. A
kernelspec named ``velocitymesh`` is installed into this interpreter's prefix
(``sys.prefix/share/jupyter/kernels``, which the venv's Jupyter reads first) whose argv is
*this* interpreter, and JupyterLab is started with it as the default kernel. ``VM_HOME``
is made absolute in the kernel's environment, because a kernel runs in its notebook's
folder and a relative ``.velocitymesh`` would find another store there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

KERNEL_NAME = "velocitymesh"
DISPLAY_NAME = "Python (VelocityMesh)"


def kernel_dir(prefix: str | Path | None = None) -> Path:
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME


def kernelspec_ok(prefix: str | Path | None = None, python: str | None = None) -> bool:
    """Whether the kernelspec exists and starts ``python`` (default: this interpreter)."""
    spec_file = kernel_dir(prefix) / "kernel.json"
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    argv = spec.get("argv") or []
    return bool(argv) and argv[0] == (python or sys.executable) and "ipykernel_launcher" in argv


def ensure_kernelspec(prefix: str | Path | None = None) -> Path:
    """Install (or repair) the ``velocitymesh`` kernelspec in ``prefix``; returns its folder."""
    target = kernel_dir(prefix)
    if kernelspec_ok(prefix):
        return target
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name=DISPLAY_NAME, prefix=str(prefix or sys.prefix))
    # ipykernel writes argv[0] = sys.executable already; say so explicitly in case it ever changes
    spec_file = target / "kernel.json"
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    spec["argv"][0] = sys.executable
    spec_file.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return target


def notebook_dir(home: Path) -> Path:
    """The workspace folder: the folder holding ``VM_HOME`` when it is the usual ``.velocitymesh``,
    else the current folder."""
    home = home.resolve()
    return home.parent if home.name == ".velocitymesh" else Path.cwd()


def lab_command(folder: Path, *, port: int | None = None, browser: bool = True,
                extra: list[str] | None = None) -> list[str]:
    """The command line starting JupyterLab in ``folder`` with the velocitymesh kernel as default."""
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={folder}",
           f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}"]
    if port is not None:
        cmd.append(f"--port={port}")
    if not browser:
        cmd.append("--no-browser")
    return cmd + list(extra or [])


def lab_environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VM_HOME"] = str(home.resolve())
    return env
