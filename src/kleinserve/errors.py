"""The domain's errors, all in one place. Each carries one clear line meant for the user; the CLI and
the API print only that (api/errors.py maps each class to its HTTP status)."""

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


class QueueFull(KleinserveError):
    """A model's queue is at its limit; `retry_after` estimates when there is room."""

    def __init__(self, model: str, depth: int, retry_after: int):
        super().__init__(f"{model} has {depth} jobs queued, its limit; retry in about {retry_after} s")
        self.retry_after = retry_after


class JobCancelled(KleinserveError):
    """The job was cancelled (by its client, or because its caller went away)."""


class GenerationStopped(KleinserveError):
    """The engine stopped a batch at a step boundary because its caller's should_stop() said so."""


class BatcherFailed(KleinserveError):
    """The loop feeding a model's engine died; the jobs it held fail with this."""


class ModelNotServed(KleinserveError):
    """A model name this server does not serve (unknown, or known but not loaded here)."""


class ModelNotReady(KleinserveError):
    """The model is still loading (or failed to load)."""

    retry_after = 5


class ShuttingDown(KleinserveError):
    """The server is stopping: it takes no new work, and work it could not finish fails with this."""

    retry_after = 10


class GenerationFailed(KleinserveError):
    """The engine raised; the job is recorded as failed."""


class ResultGone(KleinserveError):
    """Inline images (sync_mode, b64_json) that are no longer kept."""


class StoreUnavailable(KleinserveError):
    """The image store (an S3 bucket) cannot be reached or used; the message names the bucket and endpoint."""

    retry_after = 5


class DatabaseUnavailable(KleinserveError):
    """The job database (--database-url) cannot be reached or used: its connection was refused or lost.
    Nothing was recorded by the call that raised it; retry once the database is back."""

    retry_after = 5


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC from a file write, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return type(exc).__name__ == "OperationalError" and "full" in str(exc).lower()


class InvalidLora(KleinserveError):
    """A LoRA file that cannot be used: not safetensors, not a LoRA, or not shaped for this model. The service
    names the request field (loras[i].path) when it turns this into an InvalidRequest."""
