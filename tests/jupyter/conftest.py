"""The notebook API on a fresh local workspace per test: SQLite under tmp_path, python steps in a
child process (fast to start), and prices for the fake model so runs have a cost."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from velocitymesh.jupyter.workspace import LocalWorkspace, forget_local_workspaces, workspace
from velocitymesh.settings import Settings

FAKE_PRICES = '{"fake:echo": {"input": 1000, "output": 2000}}'


@pytest.fixture
def vm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """VM_* variables of a fresh workspace, so that `vm.workspace()` (the default) is this one."""
    home = tmp_path / "vmhome"
    monkeypatch.setenv("VM_HOME", str(home))
    monkeypatch.setenv("VM_ENV", "test")
    monkeypatch.setenv("VM_PYTHON_ISOLATION", "process")
    monkeypatch.setenv("VM_PRICES", FAKE_PRICES)
    yield home
    forget_local_workspaces()


@pytest.fixture
def ws(vm_env: Path) -> LocalWorkspace:
    local = workspace()
    assert isinstance(local, LocalWorkspace)
    return local


@pytest.fixture
def settings_of_env(vm_env: Path) -> Settings:
    return Settings()


class Cells:
    """Runs code as notebook cells: in IPython, in `__main__`, with the source kept as Jupyter keeps it."""

    def __init__(self) -> None:
        from IPython.core.interactiveshell import InteractiveShell

        self.shell = InteractiveShell.instance()
        self.shell.reset()

    def __call__(self, code: str) -> Any:
        result = self.shell.run_cell(textwrap.dedent(code), store_history=True)
        result.raise_error()
        return result.result

    @property
    def ns(self) -> dict[str, Any]:
        return self.shell.user_ns  # type: ignore[no-any-return]


@pytest.fixture
def cells() -> Iterator[Cells]:
    c = Cells()
    c("import velocitymesh as vm")
    yield c
    c.shell.reset()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real VelocityMesh server (uvicorn in a thread) and an owner's API token, for remote workspaces."""
    from live_helpers import served_in_thread

    from velocitymesh.server.app import create_app
    from velocitymesh.workspace import store

    settings = Settings(home=Path(tmp_path_factory.mktemp("server")) / "vmhome", env="test",
                        python_isolation="process")
    app = create_app(settings)
    services = app.state.services
    with services.session() as s:
        user = store.create_user(s, "notebook", None, services.workspace.id, "owner")
        token, _ = store.create_token(s, user.id, "notebook")
    with served_in_thread(app) as url:
        yield url, token
