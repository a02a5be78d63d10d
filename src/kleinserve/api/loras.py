"""GET /v1/loras: the LoRA files this server offers from --lora-dir, for the console's LoRA picker (and any
caller): each `.safetensors` file by the name `loras[i].path` takes (sub-folders with "/") and its size.
Behind the API keys like the other routes. Symlinks leading out of the folder are not listed (nor served);
the list is capped (`truncated` says when files were left out).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kleinserve.api import openapi_docs as docs
from kleinserve.api.errors import OpenAIError
from kleinserve.service.facade import ImageService
from kleinserve.service.lora_sources import MAX_LISTED


class LoraFileEntry(BaseModel):
    path: str = Field(description="the name loras[i].path takes: relative to --lora-dir, '/' between folders")
    size_bytes: int


class LoraList(BaseModel):
    data: list[LoraFileEntry] = Field(description=f"sorted by folder, then name; at most {MAX_LISTED}")
    lora_dir: bool = Field(description="whether the server has a --lora-dir (false: the list is empty)")
    truncated: bool = Field(description=f"true when the folder holds more than {MAX_LISTED} files")


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/loras", responses=docs.answers(LoraList, OpenAIError))
    async def loras() -> LoraList:
        """The LoRA files in --lora-dir, by the names `loras[i].path` takes (also URLs and HF repos work)."""
        found = await asyncio.to_thread(service.loras.files, MAX_LISTED + 1)
        entries = [LoraFileEntry(path=f.path, size_bytes=f.size_bytes) for f in found[:MAX_LISTED]]
        return LoraList(data=entries, lora_dir=service.loras.lora_dir is not None,
                        truncated=len(found) > MAX_LISTED)  # fmt: skip

    return routes
