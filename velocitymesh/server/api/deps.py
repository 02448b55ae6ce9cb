"""Dependencies the routers share: the services and the caller at a given role."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from velocitymesh.errors import NotFoundError
from velocitymesh.server.auth import AuthUser, get_services, require_role
from velocitymesh.server.services import Services

ServicesDep = Annotated[Services, Depends(get_services)]
Viewer = Annotated[AuthUser, Depends(require_role("viewer"))]
Editor = Annotated[AuthUser, Depends(require_role("editor"))]
Owner = Annotated[AuthUser, Depends(require_role("owner"))]


def not_in_workspace(what: str, hint: str) -> NotFoundError:
    """The same 404 for "does not exist" and "belongs to another workspace"."""
    return NotFoundError(f"no {what} in this workspace", hint=hint)
