"""Stored images, served at stable URLs: GET /files/{folder}/{index}.{png|jpg|webp} (the folder is a
random name per job, unrelated to its id). With an S3 store (`--store s3://...`) the answer is a 307 redirect
to a freshly presigned (or public) URL of the object, so a /files link works whichever store holds it."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from kleinserve.api import openapi_docs as docs
from kleinserve.api.errors import ApiError, OpenAIError
from kleinserve.imaging import CONTENT_TYPES
from kleinserve.service.facade import ImageService
from kleinserve.storage.store import CACHE_FOREVER, FILES_ROUTE


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.get(
        FILES_ROUTE + "/{folder}/{name}",
        responses={
            **docs.answers(None, OpenAIError, 404, media=",".join(CONTENT_TYPES.values())),
            307: {"description": "the image is in an S3 store: GET it at the Location header's URL"},
        },
    )
    async def stored_file(folder: str, name: str) -> Response:
        key = f"{folder}/{name}"
        found = service.local_file(key)
        if found is not None:
            return FileResponse(
                found.path, media_type=found.content_type, headers={"Cache-Control": CACHE_FOREVER}
            )
        target = await service.file_redirect(key)
        if target is not None:  # a presigned URL expires: the redirect itself must not be cached
            return RedirectResponse(target, status_code=307, headers={"Cache-Control": "no-store"})
        raise ApiError(
            404,
            f"no file {key}; stored images expire after {service.settings.retention_hours:g} hours",
            code="file_not_found",
        )

    return routes
