"""``velocitymesh up | serve | users | tokens | webhook``: the server and its accounts.

``up`` is the newcomer's command: migrate, create the admin and a demo workspace on first
start, serve on http://127.0.0.1:8080 and say how to log in. ``serve`` is production's:
0.0.0.0:$PORT, no demo data, and it refuses to start in production without VM_SECRET_KEY.
Both run one uvicorn worker: the dashboard's Bokeh sessions live in the process that made them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from velocitymesh.cli import _console, _errors, _fail, _settings, _Workspace

if TYPE_CHECKING:
    from fastapi import FastAPI

    from velocitymesh.server.bootstrap import Admin
    from velocitymesh.server.services import Services
    from velocitymesh.settings import Settings

users_app = typer.Typer(no_args_is_help=True, help="Users of the workspace and their roles.")
tokens_app = typer.Typer(no_args_is_help=True, help="API tokens (shown once when made).")
webhook_app = typer.Typer(no_args_is_help=True, help="Webhook helpers.")
ROLES = ("owner", "editor", "viewer")


def serve_app(app: FastAPI, host: str, port: int, *, log_level: str = "info", behind_proxy: bool = False) -> None:
    """Serve ``app`` with uvicorn, one worker (Bokeh sessions are per process)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level.lower(), proxy_headers=behind_proxy,
                forwarded_allow_ips="*" if behind_proxy else None, ws_max_size=16 * 1024 * 1024)


def up_banner(url: str, admin: Admin | None, seeded: list[str], settings: Settings) -> str:
    """What ``up`` prints before serving: where, and how to log in."""
    lines = [f"VelocityMesh is running at [bold]{url}[/bold]"]
    if admin is not None and admin.password is not None:
        lines.append(f"  log in as [bold]{admin.username}[/bold] with the one-time password "
                     f"[bold]{admin.password}[/bold]  (shown only now; change it with "
                     f"`velocitymesh users set-password {admin.username}`)")
    elif admin is not None:
        lines.append(f"  log in as [bold]{admin.username}[/bold] with the password in VM_ADMIN_PASSWORD")
    else:
        lines.append("  log in with your account (new ones: `velocitymesh users create NAME --role editor`)")
    if seeded:
        lines.append(f"  demo workspace: {', '.join(seeded)} (and one run of sales-report)")
    lines.append(f"  API: {url}/api/v1/docs · data in {settings.home.resolve()} · stop with Ctrl+C")
    return "\n".join(lines)


async def _seed(services: Services) -> list[str]:
    from velocitymesh.server.bootstrap import seed_demo

    try:
        return await seed_demo(services)
    finally:
        await services.aclose()


def up(
    port: Annotated[int | None, typer.Option(help="Port (default VM_PORT, 8080)")] = None,
    host: Annotated[str | None, typer.Option(help="Address (default VM_HOST, 127.0.0.1)")] = None,
    demo: Annotated[bool, typer.Option(help="Seed the example workflows on first start")] = True,
) -> None:
    """Start VelocityMesh here: migrate, seed a demo on first start, serve the dashboard and API."""
    with _errors():
        settings = _settings()
        settings = settings.model_copy(update={"port": port or settings.port, "host": host or settings.host})
        from velocitymesh.server.app import create_app
        from velocitymesh.server.bootstrap import ensure_admin

        app = create_app(settings, demo=demo)
        services: Services = app.state.services
        admin = ensure_admin(services)
        seeded = asyncio.run(_seed(services)) if demo else []
        url = f"http://{settings.host}:{settings.port}"
        _console(stderr=True).print(up_banner(url, admin, seeded, settings))
    serve_app(app, settings.host, settings.port, log_level=settings.log_level)


def serve_port(settings: Settings, port: int | None) -> int:
    """--port, else $PORT (Fly.io sets it), else VM_PORT."""
    if port:
        return port
    raw = os.environ.get("PORT", "").strip()
    if not raw:
        return settings.port
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        _fail(f"PORT={raw!r} is not a port number", "set PORT to a number between 1 and 65535")
    return int(raw)


def check_production(settings: Settings) -> None:
    """Refuse to serve production without the secrets key (sessions and secrets depend on it)."""
    if settings.env == "production" and not settings.secret_key:
        _fail("refusing to start in production without VM_SECRET_KEY",
              "set it with `fly secrets set VM_SECRET_KEY=$(velocitymesh secrets keygen)`")


def serve(
    port: Annotated[int | None, typer.Option(help="Port (default $PORT, then VM_PORT)")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "0.0.0.0",
) -> None:
    """Serve in production: 0.0.0.0:$PORT, no demo data, one worker."""
    with _errors():
        settings = _settings()
        check_production(settings)
        chosen = serve_port(settings, port)
        settings = settings.model_copy(update={"port": chosen})
        from velocitymesh.server.app import create_app
        from velocitymesh.server.bootstrap import ensure_admin

        app = create_app(settings)
        services: Services = app.state.services
        admin = ensure_admin(services, generate=False)
        err = _console(stderr=True)
        if admin is not None:
            err.print(f"created user {admin.username} (owner) with the password in VM_ADMIN_PASSWORD")
        elif not _has_users(services):
            err.print("[yellow]no users yet:[/yellow] create one with `velocitymesh users create NAME --role owner`")
        err.print(f"serving on http://{host}:{chosen}")
    serve_app(app, host, chosen, log_level=settings.log_level, behind_proxy=True)


def _has_users(services: Services) -> bool:
    from velocitymesh.workspace import store

    with services.session() as s:
        return bool(store.list_users(s))


# --- users ---------------------------------------------------------------------------------


def _read_password(from_stdin: bool) -> tuple[str, bool]:
    """(password, generated)."""
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if len(value) < 8:
            _fail("the password needs at least 8 characters", "echo 'a long password' | velocitymesh users …")
        return value, False
    import secrets

    return secrets.token_urlsafe(12), True


@users_app.command("create")
def users_create(
    name: str,
    role: Annotated[str, typer.Option(help="owner, editor or viewer")] = "editor",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
) -> None:
    """Create a user in the workspace; without --password-stdin a password is generated and shown once."""
    with _errors():
        if role not in ROLES:
            _fail(f"unknown role {role!r}", f"use one of: {', '.join(ROLES)}", code=2)
        from velocitymesh.workspace import store

        password, generated = _read_password(password_stdin)
        ws = _Workspace()
        user = ws.query(store.create_user, name, password, ws.workspace.id, role)
        _console().print(f"[green]✓[/green] user [bold]{user.username}[/bold] ({role} of {ws.workspace.name})")
        if generated:
            _console().print(f"  password: [bold]{password}[/bold]  (shown only now)")


@users_app.command("list")
def users_list() -> None:
    """The workspace's users and their roles."""
    with _errors():
        from velocitymesh.workspace import store

        ws = _Workspace()
        for u in ws.query(store.list_users, ws.workspace.id):
            state = "" if u.is_active else " (disabled)"
            typer.echo(f"{u.username}\t{u.roles.get(ws.workspace.id, '-')}{state}")


@users_app.command("set-role")
def users_set_role(name: str, role: str) -> None:
    """Change a user's role in the workspace."""
    with _errors():
        if role not in ROLES:
            _fail(f"unknown role {role!r}", f"use one of: {', '.join(ROLES)}", code=2)
        from velocitymesh.workspace import store

        ws = _Workspace()
        user = ws.query(store.get_user, name)
        ws.query(store.set_role, ws.workspace.id, user.id, role)
        _console().print(f"[green]✓[/green] {name} is {role} of {ws.workspace.name}")


@users_app.command("set-password")
def users_set_password(
    name: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
) -> None:
    """Set a user's password (generated and shown once without --password-stdin)."""
    with _errors():
        from velocitymesh.workspace import store

        password, generated = _read_password(password_stdin)
        ws = _Workspace()
        user = ws.query(store.get_user, name)
        ws.query(store.set_password, user.id, password)
        _console().print(f"[green]✓[/green] password of {name} set"
                         + (f": [bold]{password}[/bold]  (shown only now)" if generated else ""))


# --- tokens --------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    user: Annotated[str, typer.Option("--user", help="Whose token")],
    name: Annotated[str, typer.Option(help="A label to recognise it by")] = "cli",
    expires_days: Annotated[int | None, typer.Option(help="Days until it expires (default never)")] = None,
) -> None:
    """Create an API token and print it once (stdout: the token alone, for scripts)."""
    with _errors():
        from velocitymesh.workspace import store

        ws = _Workspace()
        owner = ws.query(store.get_user, user)
        expires = expires_days * 86400.0 if expires_days else None
        token, info = ws.query(store.create_token, owner.id, name, expires_in=expires)
        _console(stderr=True).print(f"token {info.prefix}… for {owner.username} (shown only now; "
                                    f"send it as Authorization: Bearer …)")
        typer.echo(token)


@tokens_app.command("list")
def tokens_list(user: Annotated[str, typer.Option("--user", help="Whose tokens")]) -> None:
    """A user's API tokens (prefixes and dates, never the tokens)."""
    with _errors():
        from velocitymesh.workspace import store

        ws = _Workspace()
        owner = ws.query(store.get_user, user)
        for t in ws.query(store.list_tokens, owner.id):
            typer.echo(f"{t.id}\t{t.prefix}…\t{t.name}\tcreated {str(t.created_at)[:19]}"
                       f"\tlast used {str(t.last_used_at)[:19] if t.last_used_at else 'never'}")


@tokens_app.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke an API token by its id (see `tokens list`)."""
    with _errors():
        from velocitymesh.workspace import store

        ws = _Workspace()
        ws.query(store.revoke_token, token_id)
        _console().print(f"[green]✓[/green] token {token_id} revoked")


# --- webhooks ------------------------------------------------------------------------------


@webhook_app.command("sign")
def webhook_sign(
    workflow: str,
    body: Annotated[Path, typer.Option("--body", help="File with the exact bytes to send")],
    timestamp: Annotated[int | None, typer.Option(help="Unix time (default now)")] = None,
) -> None:
    """Print the X-VM-Timestamp and X-VM-Signature headers for sending BODY to /hooks/WORKFLOW."""
    with _errors():
        import time

        from velocitymesh.server.webhooks import secret_name, sign
        from velocitymesh.workspace import store
        from velocitymesh.workspace.secrets import SecretStore

        ws = _Workspace()
        spec = ws.query(store.get_version, ws.workspace.id, workflow).spec
        secret = SecretStore(ws.sf, ws.settings, ws.workspace.id).get(secret_name(spec))
        ts = timestamp if timestamp is not None else int(time.time())
        typer.echo(f"X-VM-Timestamp: {ts}")
        typer.echo(f"X-VM-Signature: {sign(secret, ts, body.read_bytes())}")


def register(app: Any) -> None:
    app.command()(up)
    app.command()(serve)
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(webhook_app, name="webhook")
