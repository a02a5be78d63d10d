"""An uploaded file's record (Replicate's /v1/files): what its File object shows, whose it is, and where
its bytes are in the storage layer. The job store keeps these (jobs/uploads.py), the service makes them
(service/uploads.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

COLUMNS = ("id", "owner", "name", "content_type", "size", "sha256", "md5", "metadata", "storage_key",
           "created_at", "expires_at")  # fmt: skip


@dataclass(frozen=True)
class UploadRecord:
    id: str
    owner: str | None
    name: str
    content_type: str
    size: int
    sha256: str
    md5: str
    metadata: dict = field(default_factory=dict)
    storage_key: str = ""
    created_at: float = 0.0
    expires_at: float = 0.0

    def row(self) -> tuple:
        values = [getattr(self, column) for column in COLUMNS]
        values[COLUMNS.index("metadata")] = json.dumps(self.metadata)
        return tuple(values)

    @classmethod
    def from_row(cls, row) -> UploadRecord:
        values = dict(zip(COLUMNS, row, strict=True))
        return cls(**{**values, "metadata": json.loads(values["metadata"])})
