"""A synchronous generation whose client hangs up is cancelled: nobody else waits for it. Starlette does
not cancel a handler when its client leaves, so the handler watches the connection itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from kleinserve.api.errors import ApiError

T = TypeVar("T")


async def unless_client_leaves(http: Request, work: Awaitable[T]) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled (and with it the job)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(http))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ApiError(499, "the client closed the connection before the image was ready", code="client_gone")
    return task.result()


async def _disconnect(http: Request) -> None:
    """Returns once the client is gone (the body was read already, so only a disconnect can arrive)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
