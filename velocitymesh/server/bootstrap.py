"""First-start chores of ``velocitymesh up`` and ``serve``: the admin user and the demo workspace."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from importlib.resources import files

from velocitymesh.server.services import Services
from velocitymesh.workspace import store

log = logging.getLogger(__name__)

ADMIN = "admin"
DEMO_RUN = "sales-report"


@dataclass
class Admin:
    username: str
    password: str | None  # shown once; None when it came from VM_ADMIN_PASSWORD
    created: bool


def ensure_admin(services: Services, *, generate: bool = True) -> Admin | None:
    """On first start (no users at all) create ``admin``, owner of the workspace.

    Its password is VM_ADMIN_PASSWORD, else (when ``generate``) a random one returned to be
    printed once. Returns None when users exist already or nothing could be created.
    """
    with services.session() as s:
        if store.list_users(s):
            return None
        given = services.settings.admin_password
        if not given and not generate:
            return None
        password = given or secrets.token_urlsafe(12)
        store.create_user(s, ADMIN, password, services.workspace.id, "owner")
    log.info("created the %s user (owner of workspace %s)", ADMIN, services.workspace.name)
    return Admin(ADMIN, None if given else password, True)


def example_texts() -> dict[str, str]:
    """The example workflows shipped in ``velocitymesh/examples``, by file name."""
    return {r.name: r.read_text() for r in sorted(files("velocitymesh.examples").iterdir(), key=lambda r: r.name)
            if r.name.endswith(".yaml")}


async def seed_demo(services: Services) -> list[str]:
    """On first start (no workflows and no runs), save the examples and run one of them so the
    dashboard has something to show. Returns the names saved (empty when already seeded)."""
    from velocitymesh.flows.validation import check_workflow
    from velocitymesh.workspace.yamlio import load_workflow_text

    workspace_id = services.workspace.id
    with services.session() as s:
        if store.list_workflows(s, workspace_id) or store.list_runs(s, workspace_id, limit=1):
            return []
        saved = []
        for name, text in example_texts().items():
            spec = check_workflow(load_workflow_text(text, source=name))
            store.save_workflow(s, workspace_id, spec, author="velocitymesh", message="example")
            saved.append(spec.name)
    if DEMO_RUN in saved:
        try:
            result = await services.engine.run_saved(DEMO_RUN, {})
            log.info("demo run of %s: %s", DEMO_RUN, result.status)
        except Exception as e:  # the demo is a nicety: never stop the server from starting for it
            log.warning("the demo run of %s failed: %s", DEMO_RUN, e)
    return saved
