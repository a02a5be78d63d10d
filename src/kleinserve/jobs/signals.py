"""Signals between a job store and the coroutines waiting on it (JobStore.wait_queued, wait_changed).

A waiter parks on (topic, key), e.g. (CLAIMABLE, model) or (CHANGED, job id), until someone calls
`notify` for that pair, or its timeout passes. `notify` may be called from any thread (the SQLite store's
thread, the PostgreSQL store's listener thread), and waiters may sit on different event loops. A key of
None wakes every waiter of the topic (a notification whose payload was lost or too long).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

CLAIMABLE = "claimable"  # a job of the model (the key) may have become claimable
CHANGED = "changed"  # the job (the key) may have changed


class Signals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[tuple[str, str], set[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}

    async def wait(self, topic: str, key: str, timeout: float) -> None:
        """Until `notify(topic, key)` (or a topic-wide notify), or `timeout` seconds."""
        loop = asyncio.get_running_loop()
        waiter = (loop, loop.create_future())
        with self._lock:
            self._waiters.setdefault((topic, key), set()).add(waiter)
        try:
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancel that arrives as its
            # awaitable completes, and a stopping service would then wait here forever.
            await asyncio.wait({waiter[1]}, timeout=max(timeout, 0.0))
        finally:
            with self._lock:
                parked = self._waiters.get((topic, key))
                if parked is not None:
                    parked.discard(waiter)
                    if not parked:
                        del self._waiters[(topic, key)]

    def notify(self, topic: str, key: str | None) -> None:
        with self._lock:
            if key is None:
                woken = [w for (t, _), parked in self._waiters.items() if t == topic for w in parked]
            else:
                woken = list(self._waiters.get((topic, key), ()))
        for loop, future in woken:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_wake, future)

    def waiting(self) -> bool:
        with self._lock:
            return bool(self._waiters)


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
