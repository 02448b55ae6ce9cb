"""``/secrets``: set and delete (owners), list names (everyone). Values never come back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from velocitymesh.server.api.deps import Owner, ServicesDep, Viewer
from velocitymesh.server.schemas.admin import SecretIn, SecretOut
from velocitymesh.workspace import store
from velocitymesh.workspace.secrets import SECRET_NAME_PATTERN

router = APIRouter(prefix="/secrets", tags=["secrets"])

SecretName = Annotated[str, Path(pattern=SECRET_NAME_PATTERN, description="e.g. OPENAI_API_KEY or webhook:orders")]


@router.get("", summary="Names and dates of the workspace's secrets (never their values)")
def list_secrets(user: Viewer, services: ServicesDep) -> list[SecretOut]:
    with services.session() as s:
        return [SecretOut.model_validate(i) for i in store.list_secret_names(s, user.workspace_id)]


@router.put("/{name}", status_code=204, summary="Set a secret (encrypted at rest)")
def set_secret(name: SecretName, body: SecretIn, user: Owner, services: ServicesDep) -> Response:
    services.secrets_for(user.workspace_id).set(name, body.value)
    return Response(status_code=204)


@router.delete("/{name}", status_code=204, summary="Delete a secret")
def delete_secret(name: SecretName, user: Owner, services: ServicesDep) -> Response:
    services.secrets_for(user.workspace_id).delete(name)
    return Response(status_code=204)
