"""Schemathesis generates requests from /api/v1/openapi.json (valid and invalid ones) and sends
them as the workspace owner: no operation may answer with a server error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from server_helpers import make_team

from velocitymesh.server.app import create_app
from velocitymesh.settings import Settings

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES = 10
SEED = """
name: hello
inputs:
  who: {type: string, default: world}
steps:
  - {id: greet, kind: transform, with: {value: "hi {{ inputs.who }}"}}
"""


@pytest.mark.timeout(300)
def test_no_operation_answers_5xx(db_settings: Settings) -> None:
    settings = db_settings.model_copy(update={"token_rate_per_minute": 0})
    app = create_app(settings)
    team = make_team(app.state.services)
    auth = team.auth("owner")
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app, headers=auth)
    from starlette.testclient import TestClient

    with TestClient(app) as client:  # something to find: a workflow and a run
        assert client.post("/api/v1/workflows", json={"yaml": SEED}, headers=auth).status_code == 201
        assert client.post("/api/v1/runs", json={"workflow": "hello", "wait": 10}, headers=auth).status_code == 202

    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                             phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call(headers=auth)
            if response.status_code >= 500 and response.status_code not in (501, 503):
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
                                f"\n  reproduce: {case.as_curl_command()}")

        check()
    assert not failures, "\n".join(failures[:20])
