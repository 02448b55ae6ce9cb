"""One event loop on a background thread, where the notebook API runs the engine.

Why a thread and not ``nest_asyncio``: a Jupyter cell already runs inside the kernel's
event loop, so ``asyncio.run`` is refused there. ``nest_asyncio`` gets around that by
patching the running loop to re-enter itself, which breaks libraries that rely on
asyncio's rules (anyio, tornado, some of prefect) and is unmaintained upstream. A
dedicated loop on a daemon thread needs no patch, behaves the same in a notebook, in
IPython and in a plain script, keeps the engine (its tasks, its bus, its store
writer) on one loop for the life of the process, so ``wf.resume`` finds what
``wf.run`` left, and lets the kernel's own thread keep sending widget updates while
a run is in progress: listeners are called on the loop thread and ipywidgets sends
their messages through the kernel's IOPub thread.

Calls block the caller until the coroutine finishes. Ctrl-C (a kernel interrupt)
cancels the coroutine, so a run being waited for is cancelled rather than orphaned.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from velocitymesh.errors import UsageError

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_closers: list[Callable[[], Awaitable[None]]] = []


def loop() -> asyncio.AbstractEventLoop:
    """The background loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            new = asyncio.new_event_loop()
            thread = threading.Thread(target=_serve, args=(new,), name="velocitymesh-engine", daemon=True)
            thread.start()
            _loop, _thread = new, thread
            atexit.register(shutdown)
        return _loop


def _serve(lp: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(lp)
    lp.run_forever()


def on_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def call(coro: Coroutine[Any, Any, T], *, on_interrupt: Callable[[], None] | None = None) -> T:
    """Run ``coro`` on the background loop and wait for its result.

    ``on_interrupt`` is called (on the loop thread) when the caller is interrupted, before the
    coroutine is cancelled: the API uses it to cancel the run it waits for.
    """
    if on_loop_thread():
        coro.close()
        raise UsageError(
            "a workflow cannot be run or changed from inside a running step or a run listener",
            hint="start it from a notebook cell or a script",
        )
    lp = loop()
    future = asyncio.run_coroutine_threadsafe(coro, lp)
    try:
        return future.result()
    except KeyboardInterrupt:
        if on_interrupt is not None:
            lp.call_soon_threadsafe(on_interrupt)
            with contextlib.suppress(BaseException):
                future.result(timeout=10)
        future.cancel()
        raise
    except concurrent.futures.CancelledError:
        raise UsageError("the operation was cancelled") from None


def add_closer(closer: Callable[[], Awaitable[None]]) -> None:
    """Something to close (an engine) on the loop when the process exits."""
    _closers.append(closer)


def remove_closer(closer: Callable[[], Awaitable[None]]) -> None:
    with contextlib.suppress(ValueError):
        _closers.remove(closer)


def shutdown(timeout: float = 5.0) -> None:
    """Close what registered itself and stop the loop (at exit; tests may call it)."""
    global _loop, _thread
    with _lock:
        lp, thread = _loop, _thread
        _loop = _thread = None
    if lp is None or lp.is_closed():
        return
    closers, _closers[:] = list(_closers), []

    async def close_all() -> None:
        for closer in closers:
            with contextlib.suppress(Exception):
                await closer()

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(close_all(), lp).result(timeout)
    lp.call_soon_threadsafe(lp.stop)
    if thread is not None:
        thread.join(timeout)
    if not lp.is_running():
        lp.close()
