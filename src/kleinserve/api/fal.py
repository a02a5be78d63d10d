"""The fal dialect: the FLUX.2 [klein] endpoints as fal serves them, synchronously and through a queue.

    POST /{endpoint}                        the output JSON (fal.run; fal_client.run)
    POST /queue/{endpoint}[?fal_webhook=]   {request_id, response_url, status_url, cancel_url, queue_position}
    GET  /queue/{owner}/{alias}/requests/{id}/status[?logs=1]   IN_QUEUE | IN_PROGRESS | COMPLETED
    GET  /queue/{owner}/{alias}/requests/{id}/status/stream     the same, as server-sent events
    GET  /queue/{owner}/{alias}/requests/{id}                   the output JSON (or the job's error)
    PUT  /queue/{owner}/{alias}/requests/{id}/cancel

Endpoints are fal-ai/flux-2/klein/{4b,9b}[/edit] and the Base (/base) and KV (/kv) variants, each routed
to the served model it names. fal-client reaches this server with FAL_RUN_HOST=host:port and
FAL_QUEUE_RUN_HOST=host:port/queue (see the README). Requests are routed by request id: the
{owner}/{alias} part (fal-client builds it without the endpoint's subpath) is not needed.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from kleinserve.api import fal_stream
from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.client_gone import unless_client_leaves
from kleinserve.api.errors import ApiError, invalid
from kleinserve.api.json_body import json_object
from kleinserve.errors import InvalidRequest, ModelNotServed, UnknownModel
from kleinserve.imaging import data_uri
from kleinserve.jobs import Job, JobStatus
from kleinserve.models import resolve_model
from kleinserve.outputs import Generated, OutputOptions
from kleinserve.request import GenerationRequest, build_request
from kleinserve.service import DEMO_LABEL, ImageService, ServedModel

ENDPOINT_PREFIX = "fal-ai/flux-2/klein/"
PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_PRESET = "landscape_4_3"
OUTPUT_FORMATS = {"png", "jpeg", "webp"}
# Our internal field names -> the fal input field a user sent.
FIELDS = {"steps": "num_inference_steps", "guidance": "guidance_scale", "width": "image_size",
          "height": "image_size", "images": "image_urls"}  # fmt: skip
ENGINE_STAGES = ("text", "references", "denoise", "decode")
STREAM_POLL_S = 0.1


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        "/queue/{endpoint:path}",
        openapi_extra=docs.json_body(docs.FalInput),
        responses=docs.answers(docs.QueueSubmitted, docs.FalError, 404, 422, *docs.SERVICE),
    )
    async def submit(endpoint: str, request: Request) -> JSONResponse:
        served, generation, options, webhook = await _parse(service, request, endpoint, queued=True)
        base = str(request.base_url)
        on_finish = _webhook_sender(service, webhook, base) if webhook else None
        params = _params(endpoint, options, webhook)
        job = await service.submit(
            served, generation, options, params, on_finish=on_finish, detached=True, owner=owner_of(request)
        )
        urls = _request_urls(request, endpoint, job.id)
        body = {"request_id": job.id, **urls, "queue_position": await service.queue_position(job) or 0}
        return JSONResponse(body, headers=_headers(served, job.id))

    @routes.get(
        "/queue/{app:path}/requests/{request_id}/status",
        responses=docs.answers(docs.QueueStatus, docs.FalError, 404),
    )
    async def status(app: str, request_id: str, request: Request) -> dict:
        job = await _job(service, request_id, request)
        return await _status(service, job, _wants_logs(request), _request_urls(request, app, request_id))

    @routes.get(
        "/queue/{app:path}/requests/{request_id}/status/stream",
        responses=docs.answers(None, docs.FalError, 404, media="text/event-stream"),
    )
    async def status_stream(app: str, request_id: str, request: Request) -> StreamingResponse:
        await _job(service, request_id, request)  # 404 before the stream starts
        urls = _request_urls(request, app, request_id)
        events = _status_events(service, request_id, _wants_logs(request), urls)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @routes.get(
        "/queue/{app:path}/requests/{request_id}",
        responses=docs.answers(docs.FalOutput, docs.FalError, 404, 410, 500),
    )
    async def result(app: str, request_id: str, request: Request) -> JSONResponse:
        job = await _job(service, request_id, request)
        output = await _finished_output(service, job, str(request.base_url))
        return JSONResponse(output, headers={"x-fal-request-id": job.id})

    @routes.put(
        "/queue/{app:path}/requests/{request_id}/cancel",
        responses={**docs.answers(docs.CancelAnswer, docs.FalError, 404), 400: {"model": docs.CancelAnswer}},
    )
    async def cancel(app: str, request_id: str, request: Request) -> JSONResponse:
        await _job(service, request_id, request)  # only the caller's own fal requests
        outcome = await service.cancel(request_id)
        if outcome is None:
            raise _unknown_request(request_id)
        if outcome == "finished":
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        return JSONResponse({"status": "CANCELLATION_REQUESTED"})

    @routes.post(
        "/fal-ai/{path:path}/stream",
        openapi_extra=docs.json_body(docs.FalInput),
        responses=docs.answers(None, docs.FalError, 404, 422, *docs.SERVICE, media="text/event-stream"),
    )
    async def stream(path: str, request: Request) -> StreamingResponse:
        endpoint = f"fal-ai/{path}"
        served, generation, options, _ = await _parse(service, request, endpoint, queued=False)
        request.state.model = served.spec.id
        steps: asyncio.Queue = asyncio.Queue()
        params = {**_params(endpoint, options, None), "stream": True}
        listener = lambda *step: steps.put_nowait(step)  # noqa: E731
        job = await service.submit(
            served, generation, options, params, on_step=listener, owner=owner_of(request)
        )
        outcome = asyncio.ensure_future(service.outcome(job))
        output = partial(_output, service, prompt=generation.prompt, base_url=str(request.base_url))
        events = fal_stream.events(job.id, generation.seed, steps, outcome, output)
        return StreamingResponse(events, media_type="text/event-stream", headers={**_headers(served, job.id),
                                 "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    @routes.post(
        "/fal-ai/{path:path}",
        openapi_extra=docs.json_body(docs.FalInput),
        responses=docs.answers(docs.FalOutput, docs.FalError, 404, 422, *docs.SERVICE),
    )
    async def run(path: str, request: Request) -> JSONResponse:
        endpoint = f"fal-ai/{path}"
        served, generation, options, _ = await _parse(service, request, endpoint, queued=False)
        request.state.model = served.spec.id  # per-model latency stats
        params = _params(endpoint, options, None)
        generated = await unless_client_leaves(
            request, service.generate(served, generation, options, params, owner=owner_of(request))
        )
        body = await _output(service, generated, generation.prompt, str(request.base_url))
        return JSONResponse(body, headers=_headers(served, generated.job_id))

    return routes


# --- input -----------------------------------------------------------------------------------------


async def _parse(service: ImageService, http: Request, endpoint: str, *, queued: bool):
    served, edit = _endpoint(service, endpoint)
    fields = await json_object(http)
    webhook = http.query_params.get("fal_webhook") if queued else None
    if webhook is not None:
        await _check_webhook(service, webhook)
    width, height = _image_size(fields.get("image_size"), edit)
    options = _output_options(fields)
    urls = _image_urls(fields, edit, endpoint, served.spec.max_reference_images)
    _precheck(served, fields, width, height)  # cheap checks before any download
    names = ["image_url"] if "image_url" in fields else [f"image_urls[{i}]" for i in range(len(urls))]
    images = await asyncio.gather(
        *(service.fetch_reference(url, name) for url, name in zip(urls, names, strict=True))
    )
    return served, _to_request(served, fields, list(images), width, height), options, webhook


def _endpoint(service: ImageService, endpoint: str) -> tuple[ServedModel, bool]:
    endpoint = endpoint.strip("/")
    if not endpoint.startswith(ENDPOINT_PREFIX):
        raise HTTPException(404)
    try:
        spec = resolve_model(endpoint)
    except UnknownModel:
        raise ApiError(404, f"no endpoint {endpoint}; {_served_endpoints(service)}") from None
    try:
        served = service.model(spec.id)
    except ModelNotServed:
        raise ApiError(
            404, f"{endpoint} runs {spec.id}, which this server does not serve; {_served_endpoints(service)}"
        ) from None
    return served, endpoint.endswith("/edit")


def _served_endpoints(service: ImageService) -> str:
    endpoints = [_fal_endpoint(served) for served in service.models]
    return "it serves " + ", ".join(f"{e} and {e}/edit" for e in endpoints if e)


def _fal_endpoint(served: ServedModel) -> str | None:
    return next((a for a in served.spec.aliases if a.startswith(ENDPOINT_PREFIX)), None)


def _image_size(value: Any, edit: bool) -> tuple[int | None, int | None]:
    if value is None:
        return (None, None) if edit else PRESETS[DEFAULT_PRESET]  # edits default to the first input's size
    if isinstance(value, str):
        if value not in PRESETS:
            raise invalid("image_size", f"unknown preset {value!r}; use one of {', '.join(PRESETS)} "
                          'or {"width": W, "height": H}')  # fmt: skip
        return PRESETS[value]
    if isinstance(value, dict) and set(value) <= {"width", "height"}:
        return value.get("width"), value.get("height")
    raise invalid("image_size", f'must be a preset name or {{"width": W, "height": H}}, got {value!r}')


def _image_urls(fields: dict, edit: bool, endpoint: str, limit: int) -> list:
    """`image_urls`, or one `image_url` (what @ai-sdk/fal sends)."""
    value, single = fields.get("image_urls"), fields.get("image_url")
    if not edit:
        if value or single:
            name = "image_urls" if value else "image_url"
            raise invalid(name, f"only edit endpoints take reference images; POST to {endpoint}/edit")
        return []
    if single is not None:
        if value is not None:
            raise invalid("image_url", "give the reference images as image_urls or one image_url, not both")
        if not isinstance(single, str):
            raise invalid("image_url", f"must be one image URL or data URI, got {repr(single)[:80]}")
        return [single]
    if value is None:
        raise invalid("image_urls", f"is required by {endpoint}: give 1 to {limit} image URLs or data URIs")
    if not isinstance(value, list) or not value or len(value) > limit:
        got = f"{len(value)} URLs" if isinstance(value, list) else repr(value)[:80]
        raise invalid("image_urls", f"must be a list of 1 to {limit} image URLs or data URIs, got {got}")
    return value


def _output_options(fields: dict) -> OutputOptions:
    fmt = fields.get("output_format", "png")
    if not isinstance(fmt, str) or fmt not in OUTPUT_FORMATS:
        raise invalid("output_format", f"must be one of jpeg, png, webp; got {fmt!r}")
    sync_mode = _bool(fields, "sync_mode", False)
    return OutputOptions(
        format=fmt, store=not sync_mode, safety_check=_bool(fields, "enable_safety_checker", True)
    )


def _bool(fields: dict, name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise invalid(name, f"must be true or false, got {value!r}")
    return value


def _precheck(served: ServedModel, fields: dict, width, height) -> None:
    """Every field but the images, before any download (an edit's default size is not known yet)."""
    if fields.get("prompt") is None:
        raise invalid("prompt", "field required: describe the image you want")
    if width is None and height is None:
        width, height = served.spec.default_size
    _to_request(served, fields, [], width, height)


def _to_request(served: ServedModel, fields: dict, images: list, width, height) -> GenerationRequest:
    try:
        return build_request(
            served.spec,
            prompt=fields.get("prompt"),
            images=images,
            width=width,
            height=height,
            steps=fields.get("num_inference_steps"),
            guidance=fields.get("guidance_scale"),
            seed=fields.get("seed"),
            num_images=fields.get("num_images", 1),
            negative_prompt=fields.get("negative_prompt"),
        )
    except InvalidRequest as exc:
        name = exc.field.split("[")[0]
        field = FIELDS.get(name, name) + exc.field[len(name) :]
        if name == "images" and "image_url" in fields:
            field = "image_url"
        raise invalid(
            field, f"{exc.field} {exc.reason}" if name in ("width", "height") else exc.reason
        ) from exc


async def _check_webhook(service: ImageService, url: str) -> None:
    from httpx import URL, InvalidURL

    try:
        parsed = URL(url)
    except InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise invalid("fal_webhook", f"must be an http(s) URL, got {url[:80]!r}")
    try:
        await service.check_webhook_address(parsed.host, parsed.port, "fal_webhook")
    except InvalidRequest as exc:
        raise invalid("fal_webhook", exc.reason) from exc


def _params(endpoint: str, options: OutputOptions, webhook: str | None) -> dict:
    return {"dialect": "fal", "endpoint": endpoint, "sync_mode": not options.store,
            "enable_safety_checker": options.safety_check, "webhook": webhook}  # fmt: skip


# --- output ----------------------------------------------------------------------------------------


async def _output(service: ImageService, generated: Generated, prompt: str, base_url: str) -> dict:
    images = []
    for index, image in enumerate(generated.images):
        if image.key is not None:
            url = service.file_url(image.key, base_url)
            name = image.key.rsplit("/", 1)[-1]
        else:
            url = await data_uri(image.data, image.content_type)
            name = f"{index}.{image.content_type.split('/')[1].replace('jpeg', 'jpg')}"
        images.append(
            {
                "url": url,
                "content_type": image.content_type,
                "file_name": name,
                "file_size": image.size,
                "width": image.width,
                "height": image.height,
            }
        )
    timings = {stage: round(seconds, 4) for stage, seconds in generated.timings.items()}
    inference = sum(generated.timings.get(stage, 0.0) for stage in ENGINE_STAGES)
    return {
        "images": images,
        "seed": generated.seed,
        "prompt": prompt,
        "has_nsfw_concepts": generated.has_nsfw_concepts,
        "timings": {"inference": round(inference, 4), **timings},
    }


async def _finished_output(service: ImageService, job: Job, base_url: str) -> dict:
    if not job.status.finished:
        raise ApiError(400, f"request {job.id} is still {job.status.value}; poll its status_url",
                       code="request_in_progress")  # fmt: skip
    if job.status is JobStatus.CANCELLED:
        raise ApiError(
            400, f"request {job.id} was cancelled: {job.error['message']}", code="request_cancelled"
        )
    if job.status is JobStatus.FAILED:
        raise ApiError(500, job.error["message"], code="generation_failed")
    return await _output(service, await service.result(job), job.params["prompt"], base_url)


def _webhook_sender(service: ImageService, url: str, base_url: str):
    async def send(job_id: str) -> None:
        job = await service.job(job_id)
        if job is None:
            return
        body = {
            "request_id": job_id,
            "gateway_request_id": job_id,
            "status": "OK",
            "payload": None,
            "error": None,
        }
        try:
            body["payload"] = await _finished_output(service, job, base_url)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            body.update(status="ERROR", error=message, payload={"detail": message})
        await service.deliver_webhook(job_id, url, body)

    return send


# --- queue status ----------------------------------------------------------------------------------


async def _status(service: ImageService, job: Job, logs: bool, urls: dict) -> dict:
    body: dict[str, Any] = {"request_id": job.id, "response_url": urls["response_url"],
                            "logs": _fal_logs(job) if logs else None, "queue_position": None}  # fmt: skip
    position = await service.queue_position(job)
    if job.status.finished:
        inference = sum((job.result or {}).get("timings", {}).get(s, 0.0) for s in ENGINE_STAGES)
        body.update(status="COMPLETED", metrics={"inference_time": round(inference, 4)})
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


def _request_urls(http: Request, app: str, request_id: str) -> dict:
    owner_alias = "/".join(app.strip("/").split("/")[:2])
    base = f"{str(http.base_url).rstrip('/')}/queue/{owner_alias}/requests/{request_id}"
    return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}


def _headers(served: ServedModel, request_id: str) -> dict[str, str]:
    headers = {"x-fal-request-id": request_id, "x-kleinserve-job-id": request_id}
    if served.demo:
        headers["x-kleinserve-warning"] = DEMO_LABEL
    return headers
