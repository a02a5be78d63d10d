"""The FLUX.2 [klein] engine: loading, prompt encoding, references, sampling, decoding."""

from kleinserve.engine.engine import Engine, StepProgress

__all__ = ["Engine", "StepProgress"]
