"""Errors a user can act on. Each carries one clear line; the CLI and the API print only that."""


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
