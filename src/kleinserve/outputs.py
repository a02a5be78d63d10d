"""A job's output images: encoded (png/jpeg/webp) and stored, or held inline; rebuilt from a job record.

Images the safety checker flagged are never stored: their slot holds a black image of the same size,
returned inline. Inline results (sync_mode, b64_json) are never written anywhere: the last few are kept in
memory so a queue client can still collect them, and are gone after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kleinserve.errors import ResultGone
from kleinserve.imaging import encode_image
from kleinserve.jobs import Job
from kleinserve.request import GenerationRequest
from kleinserve.storage import CONTENT_TYPES, Store, folder_of, image_key, new_folder
from kleinserve.usage import Usage

INLINE_RESULTS_KEPT = 16


@dataclass(frozen=True)
class OutputOptions:
    format: str = "png"  # png | jpeg | webp
    quality: int | None = None  # jpeg/webp quality 0..100; None: 90
    store: bool = True  # False: images only come back inline; nothing is written
    safety_check: bool = False  # run the safety checker on each image


@dataclass(frozen=True)
class OutputImage:
    data: bytes  # empty when rebuilt from the record of a stored image
    content_type: str
    width: int
    height: int
    key: str | None  # storage key when stored
    size: int  # bytes of the encoded file
    nsfw: bool = False  # flagged by the safety checker: `data` is a black image


@dataclass
class Generated:
    job_id: str
    model: str
    seed: int
    images: list[OutputImage]
    timings: dict[str, float]
    usage: Usage | None = None

    @property
    def has_nsfw_concepts(self) -> list[bool]:
        return [image.nsfw for image in self.images]


class Outputs:
    def __init__(self, store: Store, inline_kept: int = INLINE_RESULTS_KEPT):
        self.store = store
        self._inline: OrderedDict[str, Generated] = OrderedDict()
        self._inline_kept = inline_kept

    async def encode_and_store(
        self, arrays, flags, request: GenerationRequest, output: OutputOptions, timings
    ) -> list[OutputImage]:
        start = time.monotonic()
        encoded = await asyncio.gather(
            *(asyncio.to_thread(encode_image, array, output.format, output.quality) for array in arrays)
        )
        timings["encode"] = time.monotonic() - start
        folder = new_folder()
        keys = [
            image_key(folder, i, output.format) if output.store and not flagged else None
            for i, flagged in enumerate(flags)
        ]
        start = time.monotonic()
        writes = [asyncio.to_thread(self.store.put, k, d) for k, d in zip(keys, encoded, strict=True) if k]
        if writes:
            await asyncio.gather(*writes)
            timings["store"] = time.monotonic() - start
        content_type = CONTENT_TYPES[output.format]
        return [
            OutputImage(data, content_type, request.width, request.height, key, len(data), flagged)
            for data, key, flagged in zip(encoded, keys, flags, strict=True)
        ]

    def hold_inline(self, generated: Generated) -> None:
        self._inline[generated.job_id] = generated
        while len(self._inline) > self._inline_kept:
            self._inline.popitem(last=False)

    def forget(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self._inline.pop(job_id, None)

    async def rebuild(self, job: Job) -> Generated:
        """The Generated of a succeeded job, from memory (inline results) or its record (stored ones)."""
        if job.id in self._inline:
            return self._inline[job.id]
        record = job.result or {}
        images = []
        for item in record.get("images", []):
            data = b""
            if item.get("nsfw"):
                data = await asyncio.to_thread(black_image, item["width"], item["height"], item["format"])
            elif item.get("key") is None:
                raise ResultGone(
                    f"request {job.id} returned its images inline (sync_mode / b64_json); they were never "
                    "stored and are no longer held in memory; submit the request again"
                )
            images.append(
                OutputImage(
                    data,
                    item["content_type"],
                    item["width"],
                    item["height"],
                    item.get("key"),
                    item["bytes"],
                    bool(item.get("nsfw")),
                )
            )
        usage = Usage(**record["usage"]) if record.get("usage") else None
        return Generated(job.id, job.model, record.get("seed", 0), images, record.get("timings", {}), usage)


def stored_folders(job: Job) -> set[str]:
    """The storage folders holding a job's images."""
    return {folder_of(item["key"]) for item in (job.result or {}).get("images", []) if item.get("key")}


@lru_cache(maxsize=32)
def black_image(width: int, height: int, fmt: str) -> bytes:
    return encode_image(np.zeros((height, width, 3), np.uint8), fmt)


def result_record(generated: Generated) -> dict:
    formats = {content_type: fmt for fmt, content_type in CONTENT_TYPES.items()}
    return {
        "seed": generated.seed,
        "timings": generated.timings,
        "usage": generated.usage.record() if generated.usage else None,
        "images": [
            {
                "key": i.key,
                "content_type": i.content_type,
                "format": formats[i.content_type],
                "width": i.width,
                "height": i.height,
                "bytes": i.size,
                "nsfw": i.nsfw,
            }
            for i in generated.images
        ],
    }
