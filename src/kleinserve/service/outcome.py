"""How a job ended, as one typed value whether it ran in this process or in a worker: its images, or its
error. A job's error is recorded in the job store as {"type", "message", "param"} (what the API shows);
`JobError` is that record typed, and `JobError.exception` is the one place it becomes the exception a
waiting caller gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from kleinserve.errors import (
    GenerationFailed,
    JobCancelled,
    KleinserveError,
    ResultGone,
    ShuttingDown,
    StorageFull,
)
from kleinserve.service.outputs import Generated

SERVER_ERROR = "server_error"
CANCELLED = "cancelled"
STORAGE_FULL = "storage_full"
SHUTTING_DOWN = "shutting_down"
RESULT_GONE = "result_gone"  # never recorded: a finished job's inline images expired before collection

DISK_FULL = "the server's disk is full, so nothing more can be recorded or stored; retry once space is freed"

_RAISED = {
    CANCELLED: JobCancelled,
    STORAGE_FULL: StorageFull,
    SHUTTING_DOWN: ShuttingDown,
    RESULT_GONE: ResultGone,
}


@dataclass(frozen=True)
class JobError:
    code: str  # the record's "type"
    message: str  # for the user: it names no internals
    field: str | None = None  # the record's "param"

    def record(self) -> dict:
        """As the job store keeps it (and the API shows it)."""
        return {"type": self.code, "message": self.message, "param": self.field}

    @classmethod
    def from_record(cls, record: dict | None, default_message: str) -> JobError:
        record = record or {}
        return cls(
            record.get("type") or SERVER_ERROR, record.get("message", default_message), record.get("param")
        )

    def exception(self) -> KleinserveError:
        return _RAISED.get(self.code, GenerationFailed)(self.message)


@dataclass(frozen=True)
class Outcome:
    """A job's end for whoever waits on it: `generated` when it succeeded, else `error`."""

    generated: Generated | None = None
    error: JobError | None = None

    @classmethod
    def failed(cls, message: str, code: str = SERVER_ERROR) -> Outcome:
        return cls(error=JobError(code, message))
