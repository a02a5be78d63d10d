"""Where generated images live: `Store` is the interface, `LocalStore` keeps files under the data directory
and the server serves them at /files/{key}. Keys look like "{job id}/{index}.{ext}"."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FILE_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_TYPE_BY_EXTENSION = {FILE_EXTENSIONS[fmt]: content_type for fmt, content_type in CONTENT_TYPES.items()}
_KEY = re.compile(r"^[0-9a-f]{32}/[0-9]{1,3}\.(png|jpg|webp)$")
FILES_ROUTE = "/files"


def image_key(job_id: str, index: int, fmt: str) -> str:
    return f"{job_id}/{index}.{FILE_EXTENSIONS[fmt]}"


def content_type_of(key: str) -> str:
    return _TYPE_BY_EXTENSION[key.rsplit(".", 1)[-1]]


def is_valid_key(key: str) -> bool:
    return bool(_KEY.match(key))


@dataclass(frozen=True)
class LocalFile:
    path: Path
    content_type: str


class Store(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def url(self, key: str, base_url: str) -> str: ...
    def local_file(self, key: str) -> LocalFile | None: ...
    def delete_job(self, job_id: str) -> None: ...


class LocalStore:
    """Files on local disk, written atomically (a reader never sees half a file)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".partial-", delete=False) as handle:
            handle.write(data)
        os.replace(handle.name, path)

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{FILES_ROUTE}/{key}"

    def local_file(self, key: str) -> LocalFile | None:
        if not is_valid_key(key):
            return None
        path = self._path(key)
        return LocalFile(path, content_type_of(key)) if path.is_file() else None

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def _path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / key
