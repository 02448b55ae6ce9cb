"""The REST API under ``/api/v1``: one thin router per resource.

Routes parse the request (schemas), call store functions or the engine, and shape the
answer; the store functions and the engine hold the logic. Every query is scoped to the
caller's workspace, and a thing of another workspace answers 404 exactly like a thing
that does not exist. Roles: viewer reads; editor also writes workflows, starts, cancels,
resumes and approves runs, generates and schedules; owner also manages secrets, users
and API tokens.
"""

from __future__ import annotations

from fastapi import APIRouter

from velocitymesh.server.errors import ERROR_RESPONSES


def api_router() -> APIRouter:
    from velocitymesh.server.api import deployments, generate, runs, secrets, users, workflows

    router = APIRouter(responses=ERROR_RESPONSES)
    for module in (workflows, runs, secrets, deployments, generate, users):
        router.include_router(module.router)
    return router
