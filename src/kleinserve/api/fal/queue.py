"""fal's queue, once a request is submitted (POST /queue/{endpoint}, in routes.py):

    GET  /queue/{owner}/{alias}/requests/{id}/status[?logs=1]   IN_QUEUE | IN_PROGRESS | COMPLETED
    GET  /queue/{owner}/{alias}/requests/{id}/status/stream     the same, as server-sent events
    GET  /queue/{owner}/{alias}/requests/{id}                   the output JSON (or the job's error)
    PUT  /queue/{owner}/{alias}/requests/{id}/cancel

Requests are found by id alone: the {owner}/{alias} part (fal-client builds it without the endpoint's
subpath) only shapes the URLs we hand back. A request's end is also reported by webhook (webhook.py).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.errors import ApiError, FalError
from kleinserve.api.fal.output import REQUEST_ID_HEADER, finished_output, inference_time
from kleinserve.api.fal.schemas import CancelAnswer, FalOutput, QueueStatus
from kleinserve.api.step_stream import HEADERS as STREAM_HEADERS
from kleinserve.job import Job, JobStatus
from kleinserve.service.facade import ImageService

STREAM_POLL_S = 0.1


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.get(
        "/queue/{app:path}/requests/{request_id}/status",
        responses=docs.answers(QueueStatus, FalError, 404),
    )
    async def status(app: str, request_id: str, request: Request) -> dict:
        job = await _job(service, request_id, request)
        return await _status(service, job, _wants_logs(request), request_urls(request, app, request_id))

    @routes.get(
        "/queue/{app:path}/requests/{request_id}/status/stream",
        responses=docs.answers(None, FalError, 404, media="text/event-stream"),
    )
    async def status_stream(app: str, request_id: str, request: Request) -> StreamingResponse:
        await _job(service, request_id, request)  # 404 before the stream starts
        urls = request_urls(request, app, request_id)
        events = _status_events(service, request_id, _wants_logs(request), urls)
        return StreamingResponse(events, media_type="text/event-stream", headers=STREAM_HEADERS)

    @routes.get(
        "/queue/{app:path}/requests/{request_id}",
        responses=docs.answers(FalOutput, FalError, 404, 410, 500),
    )
    async def result(app: str, request_id: str, request: Request) -> JSONResponse:
        job = await _job(service, request_id, request)
        body = await finished_output(service, job, str(request.base_url))
        return JSONResponse(body, headers={REQUEST_ID_HEADER: job.id})

    @routes.put(
        "/queue/{app:path}/requests/{request_id}/cancel",
        responses={**docs.answers(CancelAnswer, FalError, 404), 400: {"model": CancelAnswer}},
    )
    async def cancel(app: str, request_id: str, request: Request) -> JSONResponse:
        await _job(service, request_id, request)  # only the caller's own fal requests
        outcome = await service.cancel(request_id)
        if outcome is None:
            raise _unknown_request(request_id)
        if outcome == "finished":
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        return JSONResponse({"status": "CANCELLATION_REQUESTED"})

    return routes


def request_urls(http: Request, app: str, request_id: str) -> dict:
    owner_alias = "/".join(app.strip("/").split("/")[:2])
    base = f"{str(http.base_url).rstrip('/')}/queue/{owner_alias}/requests/{request_id}"
    return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}


# --- status ----------------------------------------------------------------------------------------


async def _status(service: ImageService, job: Job, logs: bool, urls: dict) -> dict:
    body: dict[str, Any] = {"request_id": job.id, "response_url": urls["response_url"],
                            "logs": _fal_logs(job) if logs else None, "queue_position": None}  # fmt: skip
    position = await service.queue_position(job)
    if job.status.finished:
        inference = inference_time((job.result or {}).get("timings", {}))
        body.update(status="COMPLETED", metrics={"inference_time": inference})
        if job.status is not JobStatus.SUCCEEDED:
            body.update(error=job.error["message"], error_type=job.error.get("type"))
    elif job.status is JobStatus.QUEUED and position is not None:
        body.update(status="IN_QUEUE", queue_position=position)
    else:
        body.update(status="IN_PROGRESS")
    return body


async def _status_events(service: ImageService, request_id: str, logs: bool, urls: dict):
    last = None
    while True:
        job = await service.job(request_id)
        if job is None:  # expired while streaming
            return
        status = await _status(service, job, logs, urls)
        text = json.dumps(status)
        if text != last:
            yield f"data: {text}\n\n"
            last = text
        if status["status"] == "COMPLETED":
            return
        await asyncio.sleep(STREAM_POLL_S)


def _fal_logs(job: Job) -> list[dict]:
    return [
        {
            "message": entry["message"],
            "level": entry.get("level", "INFO"),
            "source": "user",
            "timestamp": datetime.fromtimestamp(entry["timestamp"], UTC).isoformat(),
        }
        for entry in job.logs
    ]


def _wants_logs(http: Request) -> bool:
    return http.query_params.get("logs", "").lower() in ("1", "true", "yes")


async def _job(service: ImageService, request_id: str, http: Request) -> Job:
    job = await service.owned_job(request_id, owner_of(http))
    if job is None or job.params.get("dialect") != "fal":
        raise _unknown_request(request_id)
    return job


def _unknown_request(request_id: str) -> ApiError:
    return ApiError(404, f"no request {request_id!r}; requests are kept for the server's retention period",
                    code="request_not_found")  # fmt: skip
