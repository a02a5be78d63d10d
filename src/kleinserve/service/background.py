"""The asyncio work a process runs beside its requests: named loops that live until it stops (batchers, the
requeue of expired leases, webhook delivery, ...) and fire-and-forget work (completions, log lines,
callbacks) that a stopping process still awaits. One owner for both, shared by the parts a process is
assembled from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine

log = logging.getLogger("kleinserve")


class Background:
    def __init__(self):
        self._loops: list[asyncio.Task] = []
        self._spawned: set[asyncio.Future] = set()

    def loop(self, coroutine: Coroutine, name: str) -> asyncio.Task:
        """Runs until it returns or the process stops."""
        task = asyncio.create_task(coroutine, name=name)
        self._loops.append(task)
        return task

    def spawn(self, coroutine: Awaitable) -> None:
        """Runs in the background; a failure is logged, and `drained` waits for it."""
        task = asyncio.ensure_future(coroutine)
        self._spawned.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future) -> None:
        self._spawned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def drained(self, timeout: float, first: Awaitable | None = None) -> None:
        """Until `first` (e.g. the batchers stopping) and then all spawned work are done, or `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if first is not None:
                    await first
                while self._spawned:
                    await asyncio.gather(*list(self._spawned), return_exceptions=True)

    async def stop(self) -> None:
        tasks = [*self._loops, *self._spawned]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
