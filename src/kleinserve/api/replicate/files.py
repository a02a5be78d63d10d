"""Replicate's Files API, as replicate-python (`files.create/get/list/delete`, and `run()`, which uploads a
file input with its default file_encoding_strategy "url") and the replicate npm client call it:

    POST   /v1/files                 multipart: `content` (the file), `filename`, `type`, `metadata` (JSON)
    GET    /v1/files[?cursor=]       the caller's files, newest first (a page, as predictions)
    GET    /v1/files/{id}            one File object
    DELETE /v1/files/{id}            204
    GET    /v1/files/{id}/download   the bytes (the File's urls.get), with the same API key

Only reference images are kept (png, jpeg, webp; service/uploads.py), for the server's retention. A
prediction whose `images` names a file's urls.get on this server reads it here, by id and owner, without
an HTTP fetch (own_file_id). Another API key's file is not found.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.errors import ApiError, invalid
from kleinserve.api.replicate.schemas import ReplicateError, ReplicateFile, ReplicateFilePage, UploadForm
from kleinserve.imaging import CONTENT_TYPES
from kleinserve.service.facade import ImageService
from kleinserve.upload import UploadRecord

PAGE_SIZE = 100
MAX_FIELD_BYTES = 64 * 1024  # filename, type, metadata
DOWNLOAD = re.compile(r"^/v1/files/([0-9a-f]{32})/download$")


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.post("/files", status_code=201, openapi_extra=docs.multipart_body(UploadForm),
                 responses={201: {"model": ReplicateFile, "description": "Created"},
                            **docs.answers(None, ReplicateError, 400, 413, 415, 422)})  # fmt: skip
    async def create(request: Request) -> Response:
        content, name, metadata = await _read_upload(service, request)
        record = await service.uploads.create(content, name, metadata, owner_of(request))
        return Response(json.dumps(_file(service, request, record)), 201, media_type="application/json")

    @routes.get("/files", responses=docs.answers(ReplicateFilePage, ReplicateError))
    async def listing(request: Request, cursor: str | None = Query(None, description="next or previous")):
        start = int(cursor) if cursor and cursor.isdigit() else 0
        records = await service.uploads.listed(owner_of(request))
        base = f"{str(request.base_url).rstrip('/')}/v1/files"
        following = f"{base}?cursor={start + PAGE_SIZE}" if start + PAGE_SIZE < len(records) else None
        preceding = f"{base}?cursor={max(0, start - PAGE_SIZE)}" if start > 0 else None
        results = [_file(service, request, record) for record in records[start : start + PAGE_SIZE]]
        return {"next": following, "previous": preceding, "results": results}

    @routes.get("/files/{file_id}", responses=docs.answers(ReplicateFile, ReplicateError, 404))
    async def get(file_id: str, request: Request) -> dict:
        return _file(service, request, await _own(service, request, file_id))

    @routes.delete("/files/{file_id}", status_code=204, responses=docs.answers(None, ReplicateError, 404))
    async def delete(file_id: str, request: Request) -> Response:
        if not await service.uploads.delete(file_id, owner_of(request)):
            raise _not_found(file_id)
        return Response(status_code=204)

    images = ",".join(CONTENT_TYPES.values())

    @routes.get("/files/{file_id}/download", responses=docs.answers(None, ReplicateError, 404, media=images))
    async def download(file_id: str, request: Request) -> Response:
        record = await _own(service, request, file_id)
        data = await service.uploads.content(record)
        if data is None:
            raise _not_found(file_id)
        return Response(data, media_type=record.content_type, headers={"ETag": f'"{record.md5}"'})

    return routes


def own_file_id(service: ImageService, http: Request, url: str) -> str | None:
    """The file id if `url` is a urls.get of this server (its own or its public base URL), else None."""
    parts = urlsplit(url)
    match = DOWNLOAD.match(parts.path)
    if match is None or parts.query or parts.fragment:
        return None
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    ours = {_origin(str(http.base_url)), _origin(service.settings.public_base_url or "")}
    return match.group(1) if origin in ours else None


def _origin(base: str) -> str:
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}".lower()


async def _read_upload(service: ImageService, http: Request) -> tuple[bytes, str, dict]:
    if not http.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "send the file as multipart/form-data with the file in `content`")
    try:
        form = await http.form(max_files=2, max_fields=8, max_part_size=MAX_FIELD_BYTES)
    except HTTPException as exc:
        raise ApiError(400, f"the multipart body could not be read: {exc.detail}") from exc
    upload = form.get("content")
    if not isinstance(upload, UploadFile):
        raise invalid("content", "is required: the file as a multipart file part named `content`")
    limit = service.settings.max_image_bytes
    if upload.size is not None and upload.size > limit:
        message = f"content: the file is {upload.size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB"
        raise ApiError(413, message, param="content")
    filename = form.get("filename")
    name = filename if isinstance(filename, str) and filename else (upload.filename or "file")
    return await upload.read(), name[:255], _metadata(await _text(form.get("metadata")))


async def _text(part: object) -> object:
    """A text field as it is; a file part (the npm client sends `metadata` as a JSON Blob) read as text."""
    if not isinstance(part, UploadFile):
        return part
    data = await part.read(MAX_FIELD_BYTES + 1)
    if len(data) > MAX_FIELD_BYTES:
        raise invalid("metadata", f"is over {MAX_FIELD_BYTES // 1024} KiB; keep it small")
    return data.decode("utf-8", errors="replace")


def _metadata(text: object) -> dict:
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise invalid("metadata", 'must be a JSON object, such as {"purpose": "reference"}')
    return value


async def _own(service: ImageService, http: Request, file_id: str) -> UploadRecord:
    record = await service.uploads.get(file_id, owner_of(http))
    if record is None:
        raise _not_found(file_id)
    return record


def _not_found(file_id: str) -> ApiError:
    message = f"file {file_id!r} not found for this API token; files are kept for the server's retention"
    return ApiError(404, message, code="file_not_found")


def _file(service: ImageService, http: Request, record: UploadRecord) -> dict:
    base = (service.settings.public_base_url or str(http.base_url)).rstrip("/")
    expires = None if service.uploads.forever(record) else _time(record.expires_at)
    return {"id": record.id, "name": record.name, "content_type": record.content_type, "size": record.size,
            "etag": record.md5, "checksums": {"sha256": record.sha256, "md5": record.md5},
            "metadata": record.metadata, "created_at": _time(record.created_at), "expires_at": expires,
            "urls": {"get": f"{base}/v1/files/{record.id}/download"}}  # fmt: skip


def _time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
