"""Shared by the store tests (imported as a top-level module: the tests folders are not packages)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from velocitymesh.workspace.spec import Workflow
from velocitymesh.workspace.store import session_scope


@dataclass
class Store:
    kind: str
    url: str
    engine: sa.Engine
    factory: sessionmaker[Session]
    workspace_id: str

    def session(self) -> AbstractContextManager[Session]:
        return session_scope(self.factory)


def make_spec(name: str = "hn-digest", description: str = "first", value: object = 1) -> Workflow:
    return Workflow.model_validate(
        {
            "name": name,
            "description": description,
            "inputs": {"count": 5},
            "steps": [
                {"id": "top", "kind": "transform", "with": {"value": value}},
                {
                    "id": "pick",
                    "kind": "transform",
                    "needs": ["top"],
                    "with": {"value": "{{ steps.top.output }}"},
                },
            ],
        }
    )
