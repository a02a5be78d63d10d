"""Uploaded reference images (Replicate's /v1/files), kept for the server's retention like jobs: the bytes
through the storage layer (a random folder of their own, as a job's images have: local or S3, so every
process of a scaled-out server reads them), the record in the job store. Only png, jpeg and webp images
are kept, each decoded first (the references' own decoder: size, pixel and decompression-bomb limits), so
nothing but a usable image is ever stored. Another owner's upload is as unknown as a missing one.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time

from kleinserve.errors import InvalidRequest
from kleinserve.imaging import CONTENT_TYPES, PNG_SIGNATURE
from kleinserve.jobs.contract import UploadRecords
from kleinserve.service.references import References
from kleinserve.settings import Settings
from kleinserve.storage.store import Store, folder_of, image_key, new_folder
from kleinserve.upload import UploadRecord

FIELD = "content"
NEVER_S = 253402300799.0  # 9999-12-31: what "kept forever" is stored as (--retention-hours 0)
LISTED = 1000  # the newest uploads a listing pages through


def sniffed_format(data: bytes) -> str | None:
    """png, jpeg or webp by the bytes' signature; None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


class UploadedFiles:
    def __init__(self, jobs: UploadRecords, store: Store, settings: Settings, references: References):
        self.jobs = jobs
        self.store = store
        self.settings = settings
        self.references = references

    async def create(self, data: bytes, name: str, metadata: dict, owner: str | None) -> UploadRecord:
        """InvalidRequest naming `content` unless `data` is a png, jpeg or webp image within the limits."""
        limit = self.settings.max_image_bytes
        if len(data) > limit:
            size = f"{len(data) / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB"
            raise InvalidRequest(FIELD, f"{name} is {size}")
        if not data:
            raise InvalidRequest(FIELD, f"{name} is empty (0 bytes)")
        fmt = sniffed_format(data)
        if fmt is None:
            raise InvalidRequest(FIELD, f"{name} is not a png, jpeg or webp image; only images are kept here")
        await self.references.decode(data, name, FIELD)  # refuses broken, huge and bomb images
        key = image_key(new_folder(), 0, fmt)
        await asyncio.to_thread(self.store.put, key, data)
        now = time.time()
        retention_s = self.settings.retention_hours * 3600
        record = UploadRecord(
            id=secrets.token_hex(16), owner=owner, name=name, content_type=CONTENT_TYPES[fmt], size=len(data),
            sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(), metadata=metadata,
            storage_key=key, created_at=now, expires_at=now + retention_s if retention_s > 0 else NEVER_S,
        )  # fmt: skip
        await self.jobs.add_upload(record)
        return record

    async def get(self, upload_id: str, owner: str | None) -> UploadRecord | None:
        return await self.jobs.upload(upload_id, owner, time.time())

    async def listed(self, owner: str | None) -> list[UploadRecord]:
        return await self.jobs.uploads(owner, time.time(), LISTED)

    async def delete(self, upload_id: str, owner: str | None) -> bool:
        record = await self.jobs.delete_upload(upload_id, owner)
        if record is not None:
            await asyncio.to_thread(self.store.delete_folder, folder_of(record.storage_key))
        return record is not None

    async def content(self, record: UploadRecord) -> bytes | None:
        return await asyncio.to_thread(self.store.read, record.storage_key)

    async def image(self, upload_id: str, owner: str | None, field: str):
        """The owner's upload, decoded as a reference image; InvalidRequest naming `field` if it is gone."""
        record = await self.get(upload_id, owner)
        data = await self.content(record) if record is not None else None
        if data is None:
            gone = "not found for this API token; uploads are kept for the server's retention period"
            raise InvalidRequest(field, f"file {upload_id} {gone}")
        return await self.references.decode(data, record.name, field)

    def forever(self, record: UploadRecord) -> bool:
        return record.expires_at >= NEVER_S
