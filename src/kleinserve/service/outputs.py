"""A job's output images: encoded (png/jpeg/webp) and stored, or held inline; rebuilt from a job record.

Images the safety checker flagged are never stored: their slot holds a black image of the same size,
returned inline. Inline results (sync_mode, b64_json) are not stored as files: their bytes are kept in the
job store for `inline_result_ttl_s` (10 minutes by default) so a queue client can still collect them, in
any process, and are deleted after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kleinserve.errors import ResultGone
from kleinserve.imaging import encode_image
from kleinserve.job import Job
from kleinserve.jobs.contract import JobStore
from kleinserve.request import GenerationRequest, OutputOptions
from kleinserve.storage.store import CONTENT_TYPES, Store, folder_of, image_key, new_folder
from kleinserve.usage import Usage


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
    def __init__(self, store: Store, jobs: JobStore, inline_ttl_s: float):
        self.store = store
        self.jobs = jobs
        self.inline_ttl_s = inline_ttl_s

    async def encode_and_store(
        self, arrays, flags, request: GenerationRequest, output: OutputOptions, timings, *, retrying=None
    ) -> list[OutputImage]:
        """`retrying(write)`: runs the image store's writes (`write()` starts them again), retrying as it
        sees fit. What a failed write left in the store is deleted (a job's images are all stored or none)."""
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
        if any(keys):
            await self._write(folder, keys, encoded, retrying)
            timings["store"] = time.monotonic() - start
        content_type = CONTENT_TYPES[output.format]
        return [
            OutputImage(data, content_type, request.width, request.height, key, len(data), flagged)
            for data, key, flagged in zip(encoded, keys, flags, strict=True)
        ]

    async def _write(self, folder: str, keys: list, encoded: list[bytes], retrying) -> None:
        async def write():
            pairs = [(key, data) for key, data in zip(keys, encoded, strict=True) if key]
            # every write ends before a failure is raised: a folder deleted while another write of it was
            # still under way would keep that write's file
            ends = await asyncio.gather(
                *(asyncio.to_thread(self.store.put, key, data) for key, data in pairs), return_exceptions=True
            )
            failed = next((end for end in ends if isinstance(end, BaseException)), None)
            if failed is not None:
                raise failed

        try:
            await (write() if retrying is None else retrying(write))
        except BaseException:
            with contextlib.suppress(Exception):  # the store may still be away: then it stays
                await asyncio.to_thread(self.store.delete_folder, folder)
            raise

    async def hold_inline(self, generated: Generated, lease: str | None = None) -> bool:
        """Keep the images inline (False, nothing kept, once `lease` no longer holds the job)."""
        keep_until = time.time() + self.inline_ttl_s
        images = [image.data for image in generated.images]
        return await self.jobs.put_inline(generated.job_id, images, keep_until, lease=lease)

    async def discard(self, generated: Generated) -> None:
        """Delete what was stored for a result nobody will collect (its job was cancelled meanwhile)."""
        for folder in {folder_of(image.key) for image in generated.images if image.key}:
            await asyncio.to_thread(self.store.delete_folder, folder)

    async def rebuild(self, job: Job) -> Generated:
        """The Generated of a succeeded job, from its record (stored images) and the job store (inline)."""
        record = job.result or {}
        items = record.get("images", [])
        inline = await self.jobs.inline(job.id) if any(item.get("key") is None for item in items) else None
        images = []
        for index, item in enumerate(items):
            data = b""
            if item.get("nsfw"):
                data = await asyncio.to_thread(black_image, item["width"], item["height"], item["format"])
            elif item.get("key") is None:
                if inline is None:
                    raise ResultGone(
                        f"request {job.id} returned its images inline (sync_mode / b64_json); they were "
                        f"kept for {self.inline_ttl_s:g} s and are gone now; submit the request again"
                    )
                data = inline[index]
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
