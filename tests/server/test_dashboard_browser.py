"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the real
app served by uvicorn on a free port, on a fresh VM_HOME.

One journey: log in, write a workflow in the editor, watch a validation problem appear
and go away, save it, run it, watch its steps turn green live, open the run, log out —
plus a viewer who sees no write buttons. Every request the pages make must stay on the
server (the dashboard works offline). Screenshots of the main pages go to
``test-artifacts/screenshots/``; ``VM_TEST_UPDATE_SCREENSHOT=1`` also refreshes the README's
``docs/screenshot.png``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from velocitymesh.settings import Settings

pytestmark = pytest.mark.browser

REQUIRE_SERVICES = os.environ.get("VM_REQUIRE_SERVICES") == "1"

CHROMIUM = Path(os.environ.get("VM_TEST_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
ADMIN_PASSWORD = "browser-test-pw-1"
VIEWER_PASSWORD = "viewer-test-pw-1"
TIMEOUT_MS = 30_000

BROKEN = """\
name: browser-demo
description: "Made in the <b>browser</b> test & co"
inputs:
  pause: {type: number, default: 0.6}
steps:
  - id: start
    kind: transform
    with:
      value: {greeting: hello}
  - id: slow
    kind: nopez
    needs: [start]
"""

FIXED = """\
name: browser-demo
description: "Made in the <b>browser</b> test & co"
inputs:
  pause: {type: number, default: 0.6}
steps:
  - id: start
    kind: transform
    with:
      value: {greeting: hello}
  - id: slow
    kind: python
    needs: [start]
    with:
      code: |
        import time
        def main(pause):
            time.sleep(pause)
            return "slept"
      args: {pause: "{{ inputs.pause }}"}
  - id: finish
    kind: transform
    needs: [slow]
    with:
      value: "{{ steps.start.output.greeting }} after {{ steps.slow.output }}"
"""


def _need_browser() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"Chromium is not installed at {CHROMIUM} (make sysdeps, or apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package is not installed (pip install -e '.[dev]')")
    if missing:
        reason = "; ".join(missing)
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason} and VM_REQUIRE_SERVICES=1")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app on uvicorn in a thread: an admin (owner), a viewer, and the demo workspace
    (the example workflows, sales-report run once)."""
    _need_browser()
    import uvicorn

    from velocitymesh.server.app import create_app
    from velocitymesh.server.bootstrap import ensure_admin, seed_demo
    from velocitymesh.workspace import store

    port = _free_port()
    settings = Settings(home=tmp_path_factory.mktemp("vmhome"), env="test", admin_password=ADMIN_PASSWORD,
                        port=port)
    app = create_app(settings)
    services = app.state.services
    ensure_admin(services)
    with services.session() as s:
        store.create_user(s, "vera", VIEWER_PASSWORD, services.workspace.id, "viewer")
    with ThreadPoolExecutor(1) as pool:  # its own loop: Playwright's sync API may hold this thread's
        assert "sales-report" in pool.submit(asyncio.run, seed_demo(services)).result()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


class Visit:
    """A browser context that records every request leaving the server."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.base = base_url
        self.context = browser.new_context(viewport={"width": 1440, "height": 920})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", self._request)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _request(self, request: Any) -> None:
        url = request.url
        if not url.startswith((self.base + "/", "data:", "blob:", "about:")) and url != self.base:
            self.outside.append(url)

    def login(self, username: str, password: str) -> None:
        page = self.page
        page.goto(self.base + "/workflows")
        page.wait_for_url("**/login**")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(self.base + "/workflows")
        page.get_by_text("Log out").wait_for()

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


def _type_into_editor(page: Any, text: str) -> None:
    editor = page.locator(".ace_text-input")
    editor.focus()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)


def test_the_dashboard_journey(browser: Any, base_url: str) -> None:
    from playwright.sync_api import expect

    v = Visit(browser, base_url)
    page = v.page
    try:
        # no session: the guard sends the page to the login form
        page.goto(base_url + "/")
        page.wait_for_url("**/login**")
        page.get_by_role("button", name="Log in").wait_for()
        v.shot("login")

        v.login("admin", ADMIN_PASSWORD)
        expect(page.get_by_role("link", name="sales-report")).to_be_visible()

        # a new workflow: a mistake is reported by path, as you type, and goes away when fixed
        page.get_by_role("button", name="New workflow").click()
        page.wait_for_url(base_url + "/workflow")
        page.get_by_text("New workflow").first.wait_for()
        _type_into_editor(page, BROKEN)
        expect(page.get_by_text("unknown step kind 'nopez'")).to_be_visible()
        expect(page.get_by_text("steps[1].kind", exact=True)).to_be_visible()
        expect(page.get_by_role("button", name="Save version")).to_be_disabled()
        v.shot("workflow-editor-problem")
        _type_into_editor(page, FIXED)
        expect(page.get_by_text("unknown step kind")).to_have_count(0)
        expect(page.get_by_text("✓ Valid · 3 steps")).to_be_visible()
        expect(page.locator('g.node[data-step="finish"]').first).to_be_attached()

        page.get_by_role("button", name="Save version").click()
        expect(page.get_by_text("Saved version 1 of browser-demo")).to_be_visible()
        page.wait_for_url("**/workflow?name=browser-demo")

        # run it with the form built from its inputs, and watch the steps go live
        page.get_by_role("button", name="Run ▸").click()
        expect(page.get_by_text("Inputs of browser-demo v1")).to_be_visible()
        page.get_by_label("pause").fill("1.2")
        page.get_by_label("pause").press("Enter")
        page.get_by_role("button", name="Start run").click()
        running = page.locator('g.node[data-step="slow"][data-status="running"]')
        expect(running).to_be_attached()
        for step in ("start", "slow", "finish"):
            expect(page.locator(f'g.node[data-step="{step}"][data-status="succeeded"]')).to_be_attached()
        expect(page.locator(".badge.status-succeeded").first).to_be_visible()
        page.wait_for_timeout(300)
        v.shot("workflow")

        # the run page: statuses, output, cost
        page.get_by_text("Open the run page →").click()
        page.wait_for_url("**/run?id=**")
        expect(page.get_by_text("Run of browser-demo")).to_be_visible()
        expect(page.locator('g.node[data-step="finish"][data-status="succeeded"]')).to_be_attached()
        expect(page.get_by_text("hello after slept").first).to_be_attached()
        v.shot("run")

        page.get_by_role("link", name="Overview").click()
        page.wait_for_url(base_url + "/")
        expect(page.get_by_text("Runs per day (14 days)")).to_be_visible()
        page.wait_for_timeout(500)
        v.shot("overview")
        page.get_by_role("link", name="Workflows").click()
        expect(page.get_by_role("link", name="browser-demo")).to_be_visible()
        expect(page.get_by_text("Made in the <b>browser</b> test & co")).to_be_visible()  # text, never markup
        v.shot("workflows")

        # the demo workflow's page: its last run drawn with green and skipped steps
        page.get_by_role("link", name="sales-report").click()
        page.wait_for_url("**/workflow?name=sales-report")
        expect(page.locator('g.node[data-step="total"][data-status="succeeded"]')).to_be_attached()
        expect(page.locator('g.node[data-status="skipped"]')).to_have_count(1)
        page.wait_for_timeout(300)
        readme_shot = v.shot("workflow-sales-report")

        page.get_by_text("Log out").click()
        page.wait_for_url("**/login**")
        page.goto(base_url + "/workflows")
        page.wait_for_url("**/login**")

        assert v.outside == [], f"the dashboard reached outside the server: {v.outside}"
        assert v.errors == [], f"errors in the page: {v.errors}"
        if os.environ.get("VM_TEST_UPDATE_SCREENSHOT") == "1" or not (ROOT / "docs" / "screenshot.png").exists():
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copyfile(readme_shot, ROOT / "docs" / "screenshot.png")
    finally:
        v.close()


def test_a_viewer_sees_no_write_buttons(browser: Any, base_url: str) -> None:
    from playwright.sync_api import expect

    v = Visit(browser, base_url)
    page = v.page
    try:
        v.login("vera", VIEWER_PASSWORD)
        expect(page.get_by_text("viewer", exact=True)).to_be_visible()
        expect(page.get_by_role("button", name="New workflow")).to_have_count(0)
        page.goto(base_url + "/workflow?name=browser-demo")
        expect(page.get_by_text("✓ Valid · 3 steps")).to_be_visible()
        expect(page.get_by_role("button", name="Save version")).to_have_count(0)
        expect(page.get_by_role("button", name="Run ▸")).to_have_count(0)
        assert v.outside == []
    finally:
        v.close()
