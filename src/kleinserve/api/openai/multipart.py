"""POST /v1/images/edits arrives as multipart/form-data: the parameters as text fields, and the reference
images as `image` (or `image[]`) file parts, each refused early when too large, then decoded."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from kleinserve.api.errors import ApiError, invalid
from kleinserve.service.facade import ImageService

MAX_FILES = 16
MAX_FIELDS = 64
MAX_PART_BYTES = 1024 * 1024  # a text field (file parts are bounded by --max-image-bytes)


async def read_form(request: Request) -> tuple[dict, list[UploadFile]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(
            415, "send the edit as multipart/form-data (image files) or application/json (image URLs)"
        )
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=MAX_PART_BYTES)
    except HTTPException as exc:
        raise ApiError(400, f"the multipart body could not be read: {exc.detail}") from exc
    fields: dict[str, Any] = {}
    uploads: list[UploadFile] = []
    for name, value in form.multi_items():
        if name in ("image", "image[]"):
            if not isinstance(value, UploadFile):
                raise invalid("image", "must be a file upload (a multipart file part), not a text field")
            uploads.append(value)
        elif name == "mask" or not isinstance(value, UploadFile):
            fields[name] = value
        else:
            raise invalid(name, "is a file, but only `image` and `image[]` take files")
    if not uploads:
        raise invalid("image", "is required: upload 1 to 4 reference images as `image` or `image[]`")
    return fields, uploads


async def decode_uploads(service: ImageService, uploads: list[UploadFile], max_images: int) -> list:
    max_bytes = service.settings.max_image_bytes
    if len(uploads) > max_images:  # refused before anything is read or decoded
        raise invalid(
            "image", f"{len(uploads)} images given; FLUX.2 [klein] takes 1 to {max_images} reference images"
        )
    images = []
    for index, upload in enumerate(uploads):
        name = f"image[{index}] ({upload.filename or 'unnamed'})"
        if upload.size is not None and upload.size > max_bytes:
            raise ApiError(
                413,
                f"{name} is {upload.size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB",
                param="image",
            )
        data = await upload.read()
        if not data:
            raise invalid("image", f"{name} is empty (0 bytes)")
        images.append(await service.decode_reference(data, name, "image"))
    return images
