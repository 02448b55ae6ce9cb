"""``/generate``: plain language → a validated workflow, or an edit of a saved one with its
diff. Nothing is saved here: the caller shows the result and saves it if wanted."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from velocitymesh.server import integrations
from velocitymesh.server.api.deps import Editor, ServicesDep
from velocitymesh.server.errors import ProblemOut
from velocitymesh.server.schemas.automation import GenerateIn, GenerateOut
from velocitymesh.workspace import store
from velocitymesh.workspace.spec import Workflow

router = APIRouter(tags=["generate"])


@router.post("/generate", summary="Write (or edit) a workflow from a plain-language request; never saves")
async def generate(body: GenerateIn, user: Editor, services: ServicesDep) -> GenerateOut:
    current: Workflow | None = None
    if body.workflow is not None:
        name = body.workflow

        def load() -> Workflow:
            with services.session() as s:
                return store.get_version(s, user.workspace_id, name).spec

        current = await asyncio.to_thread(load)
    result = await integrations.generate(services, body.request, current)
    data = result.to_json()
    data["problems"] = [ProblemOut(**p) for p in data.get("problems", [])]
    return GenerateOut(**{k: v for k, v in data.items() if k in GenerateOut.model_fields})
