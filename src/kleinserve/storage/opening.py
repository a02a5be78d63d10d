"""open_store(...): the image store a process uses, from --store: local files or an S3 bucket.

The S3 store is imported only then: boto3 comes with the `scale` extra.
"""

from __future__ import annotations

from pathlib import Path

from kleinserve.errors import InvalidRequest
from kleinserve.storage.store import LocalStore, Store


def open_store(store: str, files_dir: Path, presign_expiry_s: int, public_url: str | None) -> Store:
    """The store `--store` names: "local" (files under files_dir) or s3://BUCKET/PREFIX, checked reachable."""
    if store == "local":
        if public_url:
            raise InvalidRequest(
                "--store-public-url",
                "applies to an S3 store (--store s3://BUCKET/PREFIX); local files are served by this server, "
                "whose public address is --public-base-url",
            )
        return LocalStore(files_dir)
    from kleinserve.storage.s3 import open_s3_store

    return open_s3_store(store, presign_expiry_s, public_url)
