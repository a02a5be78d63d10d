"""Where generated images live: `Store` is the interface, `LocalStore` keeps files under the data directory
and the server serves them at /files/{key}; `--store s3://BUCKET/PREFIX` puts them in a bucket instead
(storage/s3.py; /files/{key} then redirects there). Keys look like "{folder}/{index}.{ext}", where the
folder is a random name of its own for each job: a file URL reveals nothing (such as a job id) that grants
anything."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Formats, content types and extensions: imaging's one table (service/outputs.py imports CONTENT_TYPES
# from here).
from kleinserve.imaging import CONTENT_TYPES, FORMAT_NAMES, OUTPUT_FORMATS

_EXTENSION = "|".join(fmt.extension for fmt in OUTPUT_FORMATS.values())
_KEY = re.compile(rf"^[0-9a-f]{{32}}/[0-9]{{1,3}}\.({_EXTENSION})$")
FILES_ROUTE = "/files"
CACHE_FOREVER = "public, max-age=31536000, immutable"  # a key is never reused for other bytes
PARTIAL_PREFIX = ".partial-"


def new_folder() -> str:
    return secrets.token_hex(16)


def image_key(folder: str, index: int, fmt: str) -> str:
    return f"{folder}/{index}.{OUTPUT_FORMATS[fmt].extension}"


def folder_of(key: str) -> str:
    return key.split("/", 1)[0]


def content_type_of(key: str) -> str:
    return CONTENT_TYPES[FORMAT_NAMES[key.rsplit(".", 1)[-1]]]


def is_valid_key(key: str) -> bool:
    return bool(_KEY.match(key))


@dataclass(frozen=True)
class LocalFile:
    path: Path
    content_type: str


class Store(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def read(self, key: str) -> bytes | None: ...  # None: no such file
    def url(self, key: str, base_url: str) -> str: ...
    def local_file(self, key: str) -> LocalFile | None: ...
    def redirect_url(self, key: str) -> str | None: ...  # where /files/{key} redirects, for remote stores
    def delete_folder(self, folder: str) -> None: ...
    def remove_partial_files(self) -> int: ...


class LocalStore:
    """Files on local disk, written atomically (a reader never sees half a file)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=PARTIAL_PREFIX)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            os.replace(partial, path)
        except BaseException:  # e.g. the disk filled up: leave no half-written file behind
            Path(partial).unlink(missing_ok=True)
            raise

    def read(self, key: str) -> bytes | None:
        found = self.local_file(key)
        return found.path.read_bytes() if found is not None else None

    def remove_partial_files(self) -> int:
        """Half-written files a killed process left behind (the files they were to become never appeared)."""
        partial = list(self.root.glob(f"*/{PARTIAL_PREFIX}*"))
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{FILES_ROUTE}/{key}"

    def local_file(self, key: str) -> LocalFile | None:
        if not is_valid_key(key):
            return None
        path = self._path(key)
        return LocalFile(path, content_type_of(key)) if path.is_file() else None

    def redirect_url(self, key: str) -> str | None:
        return None  # the server sends local files itself

    def delete_folder(self, folder: str) -> None:
        if is_valid_key(image_key(folder, 0, "png")):
            shutil.rmtree(self.root / folder, ignore_errors=True)

    def _path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / key
