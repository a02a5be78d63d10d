"""A prediction's `urls.stream`: GET /v1/streams/{id}, server-sent events as Replicate sends them and
replicate-javascript's / replicate-python's stream readers take them:

    event: logs     data: a new log line (one event per line: the tqdm step lines among them)
    event: output   data: an output image's URL (one event per image, once the prediction succeeded)
    event: error    data: {"detail": "..."}       when it failed
    event: done     data: {} | {"reason": "error"} | {"reason": "canceled"}      last

The prediction id in the URL is the capability (as Replicate's stream URLs are): the JS client opens it
without its token, so the path is open like /files/ (access.py).
"""

from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from kleinserve.api import openapi_docs as docs
from kleinserve.api.errors import ApiError
from kleinserve.api.replicate.prediction import logs, prediction
from kleinserve.api.replicate.schemas import ReplicateError
from kleinserve.api.step_stream import HEADERS
from kleinserve.job import JobStatus
from kleinserve.service.facade import ImageService

WAKE_S = 0.5  # between looks at a running job (the store's change signal wakes it sooner)


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.get(
        "/streams/{prediction_id}",
        responses=docs.answers(None, ReplicateError, 404, media="text/event-stream"),
    )
    async def events(prediction_id: str) -> StreamingResponse:
        job = await service.job(prediction_id)
        if job is None or job.params.get("dialect") != "replicate":
            raise ApiError(404, f"no prediction {prediction_id!r} to stream", code="prediction_not_found")
        return StreamingResponse(
            _events(service, prediction_id), media_type="text/event-stream", headers=HEADERS
        )

    return routes


async def _events(service: ImageService, prediction_id: str):
    numbered = _numbered()
    sent = 0
    while True:
        job = await service.until_ended(prediction_id, WAKE_S)
        if job is None:  # expired while streaming
            yield numbered("done", json.dumps({"reason": "error"}))
            return
        lines = (await logs(service, job)).splitlines()
        for line in lines[sent:]:
            yield numbered("logs", line)
        sent = max(sent, len(lines))
        if job.status.finished:
            break
    answer = await prediction(service, job)
    for url in answer["output"] or []:
        yield numbered("output", url)
    if job.status is JobStatus.FAILED:
        yield numbered("error", json.dumps({"detail": answer["error"]}))
    reasons = {JobStatus.FAILED: {"reason": "error"}, JobStatus.CANCELLED: {"reason": "canceled"}}
    yield numbered("done", json.dumps(reasons.get(job.status, {})))


def _numbered():
    """Renders events with ids 1, 2, ... (replicate-python's reader drops an event without an id)."""
    count = 0

    def event(name: str, data: str) -> str:
        nonlocal count
        count += 1
        body = "".join(f"data: {line}\n" for line in data.split("\n"))
        return f"event: {name}\nid: {count}\n{body}\n"

    return event
