"""What every server-sent-event stream of a running job is made of, whatever the dialect's event shapes:
each denoising step as the job reports it, a keep-alive while nothing happens, and the end.

A dialect iterates `job_steps(steps, outcome)`: (step, total, previews) tuples and KEEP_ALIVE markers until
the job's outcome is set, with no step lost (steps are reported before the outcome). It renders its own
events from them and its last event from `outcome`. Leaving the loop early (the client went away) cancels
the outcome, and with it the job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # for any event stream: no buffering
KEEP_ALIVE_S = 15.0  # an SSE comment while a streamed job waits, so idle proxies keep the connection
KEEP_ALIVE = None  # what job_steps yields when KEEP_ALIVE_S passed with no step
KEEP_ALIVE_EVENT = ": keep-alive\n\n"

Step = tuple[int, int, list]  # (step, total, previews)


async def job_steps(steps: asyncio.Queue, outcome: asyncio.Future) -> AsyncIterator[Step | None]:
    """`steps` receives (step, total, previews) tuples; `outcome` ends with the job."""
    while True:
        next_step = asyncio.ensure_future(steps.get())
        await asyncio.wait({next_step, outcome}, timeout=KEEP_ALIVE_S, return_when=asyncio.FIRST_COMPLETED)
        if next_step.done():
            yield next_step.result()
            continue
        next_step.cancel()
        if outcome.done():
            break
        yield KEEP_ALIVE
    while not steps.empty():  # steps are reported before the outcome is set: none is lost
        yield steps.get_nowait()
