"""Deployments through the CLI, read back from the Prefect API; the local server's status."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.prefect

WORKFLOW = """
name: {name}
description: Every weekday morning
trigger:
  schedule: {{cron: "0 9 * * 1-5", timezone: Europe/Paris}}
inputs:
  count: {{type: integer, default: 5}}
steps:
  - id: a
    kind: transform
    with: {{value: "{{{{ inputs.count }}}}"}}
"""


def cli(*args: str) -> Any:
    from velocitymesh.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result


def save(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(WORKFLOW.format(name=name)))
    result = cli("workflows", "save", str(path))
    assert result.exit_code == 0, result.output


def test_deploy_with_cron_is_read_back_from_the_prefect_api(prefect_env: Any, tmp_path: Path) -> None:
    save(tmp_path, "weekday-digest")
    first = cli("deploy", "weekday-digest", "--json")
    assert first.exit_code == 0, first.output
    again = cli("deploy", "weekday-digest", "--input", "count=7", "--json")  # an update, not a second deployment
    assert again.exit_code == 0, again.output
    shown = json.loads(again.output)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async def read() -> tuple[Any, list[Any]]:
        async with get_client() as client:
            d = await client.read_deployment_by_name("run-workflow/weekday-digest")
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[d.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
            return d, runs

    d, scheduled = asyncio.run(read())
    assert str(d.id) == shown["id"]
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules] == [  # type: ignore[union-attr]
        ("0 9 * * 1-5", "Europe/Paris", True)]
    assert d.parameters == {"workflow": "weekday-digest", "version": None, "inputs": {"count": "7"},
                            "workspace": "default"}
    assert d.entrypoint == "velocitymesh.flows.prefect.run_workflow" and not d.pull_steps
    assert d.work_pool_name == "velocitymesh" and "velocitymesh" in d.tags
    # one scheduled flow run per slot, even after deploying twice; the CLI shows the first ones
    slots = [r.expected_start_time for r in scheduled]
    assert slots and len(slots) == len(set(slots))
    assert all(t.weekday() < 5 and t.astimezone().tzinfo for t in slots)
    assert shown["next_runs"] == [t.isoformat() for t in sorted(slots)[:3]]

    listed = cli("deployments", "--json")
    assert listed.exit_code == 0, listed.output
    [row] = [r for r in json.loads(listed.output) if r["workflow"] == "weekday-digest"]
    assert row["cron"] == "0 9 * * 1-5" and row["timezone"] == "Europe/Paris" and row["version"] is None
    assert len(row["next_runs"]) == 3

    pinned = cli("deploy", "weekday-digest", "--version", "1", "--cron", "30 7 * * *", "--timezone", "UTC", "--json")
    assert pinned.exit_code == 0, pinned.output
    assert (json.loads(pinned.output)["cron"], json.loads(pinned.output)["version"]) == ("30 7 * * *", 1)

    assert cli("undeploy", "weekday-digest").exit_code == 0
    assert not [r for r in json.loads(cli("deployments", "--json").output) if r["workflow"] == "weekday-digest"]
    gone = cli("undeploy", "weekday-digest")
    assert gone.exit_code == 1 and "not deployed" in gone.output


def test_deploy_refuses_what_cannot_run(prefect_env: Any, tmp_path: Path) -> None:
    save(tmp_path, "strict")
    bad_cron = cli("deploy", "strict", "--cron", "every monday")
    assert bad_cron.exit_code == 1 and "invalid schedule" in bad_cron.output
    bad_input = cli("deploy", "strict", "--input", "count=many")
    assert bad_input.exit_code == 1 and "count" in bad_input.output
    missing = cli("deploy", "no-such-workflow")
    assert missing.exit_code == 1 and "no-such-workflow" in missing.output
    not_saved = cli("run", "no-such-workflow", "--engine", "prefect")  # a message, not a traceback
    assert not_saved.exit_code == 1 and "no-such-workflow" in not_saved.output
    assert "Traceback" not in not_saved.output


def test_prefect_server_status_names_the_api(prefect_env: Any) -> None:
    status = cli("prefect-server", "status", "--json")
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    assert data["running"] and data["url"] == prefect_env.env["PREFECT_API_URL"] and not data["managed"]


def test_managed_server_runs_on_the_workspace_postgres(prefect_server: Any) -> None:
    """The session's server was started by velocitymesh: Prefect's tables sit in their own schema."""
    import sqlalchemy as sa

    from velocitymesh.flows import prefect_server as server

    env = server.server_environment(prefect_server.settings)
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    engine = sa.create_engine(prefect_server.db_url)
    with engine.connect() as c:
        prefect_tables = set(c.execute(sa.text(
            "select table_name from information_schema.tables where table_schema = 'prefect'")).scalars())
        ours = set(c.execute(sa.text(
            "select table_name from information_schema.tables where table_schema = 'public'")).scalars())
    engine.dispose()
    assert {"flow_run", "deployment", "alembic_version"} <= prefect_tables
    assert "runs" in ours and "flow_run" not in ours
