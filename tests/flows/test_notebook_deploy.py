"""notebooks/04-schedule-and-deploy.ipynb against a real Prefect server: ``wf.deploy()`` deploys.

tests/test_notebooks.py runs the notebook with the embedded defaults (no Prefect server: the
deploy cell explains how to start one); here the session's Prefect server is configured
(``PREFECT_API_URL``, the store on Postgres), so the same cell creates the deployment, which
is then read back from the Prefect API.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.notebooks]

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "04-schedule-and-deploy.ipynb"


@pytest.mark.timeout(600)
def test_deploy_notebook_creates_the_deployment(prefect_env: Any, tmp_path: Path) -> None:
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VM_", "PREFECT_", "PYTEST_"))}
    env.update(prefect_env.env)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=300",
         "-p", "no:cacheprovider", "-q", "-o", "asyncio_default_fixture_loop_scope=function", NOTEBOOK.name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]

    from velocitymesh.flows import prefect_deploy
    from velocitymesh.settings import get_settings

    deployment = asyncio.run(prefect_deploy.find_deployment(get_settings(), "weekday-digest"))
    assert deployment is not None
    assert (deployment.cron, deployment.timezone) == ("0 9 * * 1-5", "Europe/Paris")
    asyncio.run(prefect_deploy.undeploy(get_settings(), "weekday-digest"))


SCRIPT = """
import sys
import velocitymesh as vm

assert "prefect" not in sys.modules
wf = vm.Workflow("local-prefect-deploy")
wf.transform("answer", 42)
deployment = wf.deploy(cron="30 6 * * *", timezone="UTC")
print(deployment.full_name, deployment.cron)
"""


@pytest.mark.timeout(300)
def test_deploy_without_prefect_api_url_uses_the_local_server(prefect_env: Any, tmp_path: Path) -> None:
    """As a notebook on a laptop does it: no PREFECT_API_URL, the local Prefect server running
    (VM_PREFECT_SERVER_PORT). wf.deploy() must choose that server before anything imports prefect."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VM_", "PREFECT_", "PYTEST_"))}
    env.update({k: v for k, v in prefect_env.env.items() if k != "PREFECT_API_URL"})
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "local-prefect-deploy 30 6 * * *" in done.stdout

    from velocitymesh.flows import prefect_deploy
    from velocitymesh.settings import get_settings

    deployment = asyncio.run(prefect_deploy.find_deployment(get_settings(), "local-prefect-deploy"))
    assert deployment is not None and deployment.cron == "30 6 * * *"
    asyncio.run(prefect_deploy.undeploy(get_settings(), "local-prefect-deploy"))
