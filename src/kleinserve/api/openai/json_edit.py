"""POST /v1/images/edits as application/json (OpenAI's JSON edit body): the same fields as the multipart
form, and the reference images as `images: [{"image_url": "<https or data: URL>"}]`, fetched through the
same outbound guard as fal's `image_urls` (private addresses refused unless --allow-private-network) and
data URLs decoded under the same size cap as uploads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import Request

from kleinserve.api.dialect_request import validated
from kleinserve.api.json_body import json_object
from kleinserve.api.openai.schemas import EditJson, check_names, optional_str
from kleinserve.service.facade import ImageService
from kleinserve.service.served_models import ServedModel


def is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


async def read_edit(
    service: ImageService, request: Request, lookup: Callable[[str | None], ServedModel]
) -> tuple[ServedModel, EditJson, list]:
    """The served model, the checked body and the fetched reference images: names and model first, then
    every field, then the downloads."""
    fields = await json_object(request)
    served = lookup(optional_str("model")(check_names(fields, EditJson.model_fields).get("model")))
    body = validated(EditJson, fields, served=lookup, max_images=served.spec.max_reference_images)
    images = await asyncio.gather(
        *(service.fetch_reference(item["image_url"], f"images[{index}].image_url")
          for index, item in enumerate(body.images))
    )  # fmt: skip
    return served, body, list(images)
