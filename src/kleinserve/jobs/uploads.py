"""Uploaded files (Replicate's /v1/files): one row each in `uploads`, beside the jobs, so that every process
of a scaled-out server sees them. The bytes live in the storage layer under `storage_key`; a row holds
what the File object shows and whose it is. Each call is a function of the backend's `Database`, as in
side_tables.py; `Uploads` is the stores' mixin.
"""

from __future__ import annotations

from kleinserve.upload import COLUMNS as _COLUMNS
from kleinserve.upload import UploadRecord

_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM uploads"


def _of_owner(owner: str | None) -> tuple[str, tuple]:
    return ("owner IS NULL", ()) if owner is None else ("owner = ?", (owner,))


def add_upload(db, record: UploadRecord) -> None:
    places = ", ".join("?" for _ in _COLUMNS)
    db.execute(f"INSERT INTO uploads ({', '.join(_COLUMNS)}) VALUES ({places})", record.row())


def upload(db, upload_id: str, owner: str | None, now: float) -> UploadRecord | None:
    whose, args = _of_owner(owner)
    row = db.execute(
        f"{_SELECT} WHERE id = ? AND {whose} AND expires_at > ?", (upload_id, *args, now)
    ).fetchone()
    return UploadRecord.from_row(row) if row else None


def uploads(db, owner: str | None, now: float, limit: int) -> list[UploadRecord]:
    whose, args = _of_owner(owner)
    rows = db.execute(
        f"{_SELECT} WHERE {whose} AND expires_at > ? ORDER BY created_at DESC, id LIMIT ?",
        (*args, now, limit),
    ).fetchall()
    return [UploadRecord.from_row(row) for row in rows]


def delete_upload(db, upload_id: str, owner: str | None) -> UploadRecord | None:
    whose, args = _of_owner(owner)
    row = db.execute(f"DELETE FROM uploads WHERE id = ? AND {whose} RETURNING {', '.join(_COLUMNS)}",
                     (upload_id, *args)).fetchone()  # fmt: skip
    return UploadRecord.from_row(row) if row else None


def expire_uploads(db, now: float) -> list[UploadRecord]:
    rows = db.execute(
        f"DELETE FROM uploads WHERE expires_at <= ? RETURNING {', '.join(_COLUMNS)}", (now,)
    ).fetchall()
    return [UploadRecord.from_row(row) for row in rows]


class Uploads:
    """The uploads table's async calls; a mixin of both stores (their `_run` runs each function above)."""

    async def _run(self, function, *args): ...

    async def add_upload(self, record: UploadRecord) -> None:
        await self._run(add_upload, record)

    async def upload(self, upload_id: str, owner: str | None, now: float) -> UploadRecord | None:
        """The owner's upload, unexpired at `now`; None for another owner's or a missing one."""
        return await self._run(upload, upload_id, owner, now)

    async def uploads(self, owner: str | None, now: float, limit: int) -> list[UploadRecord]:
        """The owner's unexpired uploads, newest first."""
        return await self._run(uploads, owner, now, limit)

    async def delete_upload(self, upload_id: str, owner: str | None) -> UploadRecord | None:
        """Remove the owner's upload; the removed record (its bytes are the caller's to delete), or None."""
        return await self._run(delete_upload, upload_id, owner)

    async def expire_uploads(self, now: float) -> list[UploadRecord]:
        """Remove every upload expired at `now`; the removed records."""
        return await self._run(expire_uploads, now)
