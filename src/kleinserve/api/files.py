"""Stored images, served at stable URLs: GET /files/{folder}/{index}.{png|jpg|webp} (the folder is a
random name per job, unrelated to its id)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from kleinserve.api import openapi_docs as docs
from kleinserve.api.errors import ApiError
from kleinserve.imaging import CONTENT_TYPES
from kleinserve.service import ImageService
from kleinserve.storage import FILES_ROUTE

CACHE_FOREVER = "public, max-age=31536000, immutable"  # a key is never reused for other bytes


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.get(
        FILES_ROUTE + "/{folder}/{name}",
        responses=docs.answers(None, docs.OpenAIError, 404, media=",".join(CONTENT_TYPES.values())),
    )
    async def stored_file(folder: str, name: str) -> FileResponse:
        found = service.local_file(f"{folder}/{name}")
        if found is None:
            raise ApiError(
                404,
                f"no file {folder}/{name}; stored images expire after "
                f"{service.settings.retention_hours:g} hours",
                code="file_not_found",
            )
        return FileResponse(
            found.path, media_type=found.content_type, headers={"Cache-Control": CACHE_FOREVER}
        )

    return routes
