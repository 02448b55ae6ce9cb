"""The python step kind: good inputs, user errors reported clearly, the in-process mode."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from velocitymesh.errors import BlockedError, ConfigurationError, StepError, StepTimeout
from velocitymesh.flows import sandbox
from velocitymesh.flows.steps import get_kind
from velocitymesh.flows.steps import python as py
from velocitymesh.flows.steps.base import StepContext, StepLogger
from velocitymesh.settings import Settings


def double_it(x: int) -> int:
    """Imported by a sandboxed step as ``test_python_step:double_it``."""
    return x * 2


@pytest.fixture(scope="module", autouse=True)
def _stop_sandboxes() -> Iterator[None]:
    yield
    asyncio.run(sandbox.shutdown_sandboxes())


def context(settings: Settings, *, timeout: float | None = None, step_id: str = "pick") -> StepContext:
    return StepContext(run_id="run1", step_id=step_id, workflow="wf", settings=settings, logger=StepLogger(),
                       timeout=timeout)


async def run(settings: Settings, timeout: float | None = 20, **config: Any) -> tuple[Any, StepContext]:
    ctx = context(settings, timeout=timeout)
    result = await py.run(py.Config(**config), ctx)
    return result.output, ctx


MODES = ["default", "inprocess"]


def test_registered() -> None:
    assert get_kind("python").run is py.run


@pytest.mark.parametrize("isolation", MODES)
async def test_code_with_args(settings: Settings, isolation: str) -> None:
    code = "def main(ids, count):\n    return {'picked': ids[:count], 'n': count}\n"
    out, _ = await run(settings, code=code, args={"ids": [5, 6, 7], "count": 2}, isolation=isolation)
    assert out == {"picked": [5, 6], "n": 2}


@pytest.mark.parametrize("isolation", MODES)
async def test_async_main_and_other_function_name(settings: Settings, isolation: str) -> None:
    code = "import asyncio\nasync def go(x):\n    await asyncio.sleep(0.01)\n    return [x, x]\n"
    out, _ = await run(settings, code=code, function="go", args={"x": "a"}, isolation=isolation)
    assert out == ["a", "a"]


async def test_module_function_stdlib_and_project(settings: Settings) -> None:
    out, _ = await run(settings, module="json:dumps", args={"obj": [1, 2]})
    assert out == "[1, 2]"
    # this test file is on the engine's sys.path, so the sandbox sees it too
    out, _ = await run(settings, module="test_python_step:double_it", args={"x": 21})
    assert out == 42


async def test_module_from_a_path_added_later_and_vm_home_hidden(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # VM_HOME (settings.home) lies inside the new sys.path entry: the sandbox must not show it
    settings.home.mkdir(parents=True)
    settings.key_file.write_text("top-secret-key")
    (tmp_path / "vm_helpers.py").write_text(
        "def main(path):\n"
        "    try:\n"
        "        return open(path).read()\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
    )
    tmp_path.chmod(0o755)  # steps run as an unprivileged uid; pytest makes it 0700
    monkeypatch.syspath_prepend(str(tmp_path))
    out, _ = await run(settings, module="vm_helpers:main", args={"path": str(settings.key_file)})
    assert out in ("FileNotFoundError", "PermissionError")


@pytest.mark.parametrize("isolation", MODES)
async def test_stdout_and_stderr_become_log_lines(settings: Settings, isolation: str) -> None:
    code = (
        "import sys\n"
        "def main():\n"
        "    print('hello')\n"
        "    print('careful', file=sys.stderr)\n"
        "    print('no newline at the end', end='')\n"
        "    return 1\n"
    )
    out, ctx = await run(settings, code=code, isolation=isolation)
    await asyncio.sleep(0)  # in-process lines reach the logger through the event loop
    lines = [(line.level, line.message) for line in ctx.logger.lines]
    assert out == 1
    assert ("info", "hello") in lines
    assert ("warning", "careful") in lines
    assert ("info", "no newline at the end") in lines


async def test_output_is_bounded(settings: Settings) -> None:
    code = "def main():\n    for i in range(20000):\n        print('x' * 100)\n    return 'done'\n"
    out, ctx = await run(settings, code=code)
    assert out == "done"
    total = sum(len(line.message) for line in ctx.logger.lines)
    assert total <= sandbox.MAX_LOG_BYTES
    assert "output cut" in ctx.logger.lines[-1].message


@pytest.mark.parametrize("isolation", MODES)
async def test_non_json_return_names_the_type(settings: Settings, isolation: str) -> None:
    with pytest.raises(StepError, match=r"the return value\['ids'\] is a set") as e:
        await run(settings, code="def main():\n    return {'ids': {1, 2}}\n", isolation=isolation)
    assert e.value.retryable is False
    with pytest.raises(StepError, match="nan, which JSON cannot represent"):
        await run(settings, code="def main():\n    return [float('nan')]\n", isolation=isolation)


@pytest.mark.parametrize("isolation", MODES)
async def test_exception_reports_user_traceback_only(settings: Settings, isolation: str) -> None:
    code = (
        "import json\n"
        "\n"
        "def helper(x):\n"
        "    raise ValueError('bad value ' + x)\n"
        "\n"
        "def main(x):\n"
        "    return helper(x)\n"
    )
    with pytest.raises(StepError) as e:
        await run(settings, code=code, args={"x": "y"}, isolation=isolation)
    message = str(e.value)
    assert message.startswith("ValueError: bad value y")
    assert 'File "<step pick>", line 7, in main' in message
    assert 'File "<step pick>", line 4, in helper' in message
    assert "raise ValueError('bad value ' + x)" in message
    for internal in ("_sandbox_child", "sandbox.py", "asyncio", sys.prefix):
        assert internal not in message


@pytest.mark.parametrize("isolation", MODES)
async def test_load_errors(settings: Settings, isolation: str) -> None:
    with pytest.raises(StepError, match=r"could not load its function: SyntaxError.*line 2") as e:
        await run(settings, code="def main():\n    return (\n", isolation=isolation)
    assert e.value.retryable is False
    with pytest.raises(StepError, match="defines no function 'main'"):
        await run(settings, code="def other():\n    return 1\n", isolation=isolation)
    with pytest.raises(StepError, match="No module named 'no_such_module_vm'"):
        await run(settings, module="no_such_module_vm:main", isolation=isolation)


async def test_exit_calls(settings: Settings) -> None:
    with pytest.raises(StepError, match=r"main\(\) called sys.exit\(3\)"):
        await run(settings, code="import sys\ndef main():\n    sys.exit(3)\n")
    with pytest.raises(StepError, match="exited with code 4 before returning"):
        await run(settings, code="import os\ndef main():\n    os._exit(4)\n")


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        py.Config(code="def main(): pass", module="a.b:c")
    with pytest.raises(ValidationError, match="exactly one of"):
        py.Config()
    with pytest.raises(ValidationError, match=r"pkg\.mod:func"):
        py.Config(module="not a module")
    with pytest.raises(ValidationError):
        py.Config(code="def main(): pass", unknown=1)  # type: ignore[call-arg]


def test_check_reports_problems_with_paths() -> None:
    assert py.check({"code": "def main(x):\n    return x\n"}) == []
    assert py.check({"code": "{{ inputs.code }}"}) == []  # rendered later
    [(path, message, _hint)] = py.check({"code": "def main(:\n"})
    assert path == "code" and "syntax error on line 1" in message
    [(path, message, hint)] = py.check({"code": "def helper():\n    pass\n"})
    assert path == "code" and "no function 'main'" in message and "def main" in hint
    [(path, message, _hint)] = py.check({"module": "a b"})
    assert path == "module"
    assert py.check({"code": "x = 1", "function": "x"}) == []


async def test_inprocess_runs_in_the_engine_process(settings: Settings) -> None:
    code = "import os\ndef main():\n    return os.getpid()\n"
    out, _ = await run(settings, code=code, isolation="inprocess")
    assert out == os.getpid()
    settings.python_isolation = "inprocess"
    out, _ = await run(settings, code=code)
    assert out == os.getpid()


async def test_inprocess_timeout(settings: Settings) -> None:
    code = "import time\ndef main():\n    time.sleep(0.5)\n    return 1\n"
    with pytest.raises(StepTimeout, match="cannot be stopped"):
        await run(settings, timeout=0.1, code=code, isolation="inprocess")
    await asyncio.sleep(0.5)  # let the thread finish before the test's loop closes


async def test_inprocess_refused_where_unsafe(settings: Settings) -> None:
    production = settings.model_copy(update={"env": "production"})
    with pytest.raises(BlockedError, match="refused in production"):
        await run(production, code="def main():\n    return 1\n", isolation="inprocess")
    with pytest.raises(ConfigurationError, match="network switched off"):
        await run(settings, code="def main():\n    return 1\n", isolation="inprocess", network=False)


async def test_args_must_be_json(settings: Settings) -> None:
    with pytest.raises(StepError, match="`args` must be JSON"):
        await run(settings, code="def main(x):\n    return 1\n", args={"x": {1, 2}})
