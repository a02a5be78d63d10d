"""Errors a user can act on. Each carries one clear line; the CLI and the API print only that."""

import errno


class KleinserveError(Exception):
    """Base class: the message is meant for the user, not for a traceback."""


class InvalidRequest(KleinserveError):
    """A request field is wrong. `field` names it; the message says what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class UnknownModel(KleinserveError):
    """The model is neither a registry id/alias nor a checkpoint directory."""


class WeightsNotFound(KleinserveError):
    """A known model whose weights are neither on disk nor downloadable."""


class InvalidCheckpoint(KleinserveError):
    """A directory that looks like a checkpoint but is not a FLUX.2 [klein] one."""


class StorageFull(KleinserveError):
    """The disk holding the job records or images is full: nothing was accepted; retry once space returns."""

    retry_after = 30


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC from a file write, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return type(exc).__name__ == "OperationalError" and "full" in str(exc).lower()
