"""What the server tests share besides fixtures: the team of users and the ASGI client."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI

from velocitymesh.server.services import Services
from velocitymesh.workspace import store

PASSWORD = "correct horse battery"


@dataclass
class Team:
    """Who can call the app: tokens by role in the main workspace, and the other workspace's owner."""

    services: Services
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def make_team(services: Services) -> Team:
    team = Team(services)
    with services.session() as s:
        ws = services.workspace.id
        other = store.get_or_create_workspace(s, "other")
        for role in ("owner", "editor", "viewer"):
            # token-only users: an argon2 hash costs ~0.3-1 s here, and only the login tests need one
            user = store.create_user(s, role, None, ws, role)
            team.tokens[role], _ = store.create_token(s, user.id, f"{role} token")
        stranger = store.create_user(s, "stranger", None, other.id, "owner")
        team.tokens["stranger"], _ = store.create_token(s, stranger.id, "other workspace")
    return team


async def open_client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080")
