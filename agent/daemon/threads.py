"""Blocking calls the daemon must be able to walk away from: each runs in a daemon thread of its own.

``asyncio.to_thread`` uses the default executor, which ``asyncio.run`` joins at exit: a call that never returns
(a PortAudio call into a vanished sound server) or takes long (a model load when the daemon is told to stop)
would hold the process up. A daemon thread does not.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable


def in_daemon_thread(fn: Callable[[], Any], name: str) -> asyncio.Future:
    """Start ``fn()`` in a daemon thread; the returned future (of the running loop) gets its result or error.
    If nobody waits any more (the loop closed), the result is dropped."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def target() -> None:
        try:
            r, e = fn(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the loop
            r, e = None, exc

        def done() -> None:
            if fut.done():
                return
            if e is not None:
                fut.set_exception(e)
            else:
                fut.set_result(r)

        try:
            loop.call_soon_threadsafe(done)
        except RuntimeError:  # the loop is closed
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return fut
