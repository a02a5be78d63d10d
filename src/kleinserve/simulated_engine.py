"""A stand-in engine for the control-plane capacity benchmark (benchmarks/bench_capacity.py), never for
serving: it sleeps a fixed time per image (as a GPU would take) and answers a fixed mid-grey image of the
requested size, so that many `kleinserve worker` processes fit on one machine behind the real batcher, job
store, image store and API code. It is switched on only by the environment variable
KLEINSERVE_SIMULATED_ENGINE_MS (milliseconds per image), read here and nowhere else; a worker that uses it
says so loudly in its log, and imports neither torch nor the model code.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kleinserve.batch_policy import batch_key
from kleinserve.errors import GenerationStopped
from kleinserve.models import ModelSpec
from kleinserve.request import GenerationRequest, GenerationResult

VARIABLE = "KLEINSERVE_SIMULATED_ENGINE_MS"
GREY = 128
PREVIEW_PX = 32


@dataclass(frozen=True)
class SimulatedStep:
    """The fields of engine.engine.StepProgress (which would import torch)."""

    request_indices: tuple[int, ...]
    step: int
    total_steps: int
    previews: Callable[[], list[np.ndarray]]


def simulated_engine_ms() -> float | None:
    """The per-image latency asked for in KLEINSERVE_SIMULATED_ENGINE_MS, or None (the real engine)."""
    value = os.environ.get(VARIABLE, "").strip()
    if not value:
        return None
    ms = float(value)
    if ms < 0:
        raise ValueError(f"{VARIABLE} must be a number of milliseconds >= 0, not {value!r}")
    return ms


class _NoLoraCache:
    max_bytes = 0  # the worker sets a LoRA cache size; the stand-in loads no LoRA


class SimulatedEngine:
    """What the batcher needs of an engine (jobs/batcher.py BatchEngine), and nothing else."""

    def __init__(self, spec: ModelSpec, ms_per_image: float):
        self.spec = spec
        self.ms_per_image = ms_per_image
        self.lora_source: Callable | None = None
        self.lora_cache = _NoLoraCache()

    def batch_key(self, request: GenerationRequest) -> str:
        return batch_key(self.spec, request)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: Callable | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        """Sleeps its images' time split over the denoising steps, telling `on_step` after each, as the
        real engine does (so progress writes and cancellation behave as they would on a GPU)."""
        images = sum(request.num_images for request in requests)
        steps = max(request.steps for request in requests)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            time.sleep(images * self.ms_per_image / 1000 / steps)
            if should_stop is not None and should_stop():
                raise GenerationStopped("every job of the batch was stopped")
            if on_step is not None:
                previews = lambda: [_grey(PREVIEW_PX, PREVIEW_PX) for _ in range(images)]  # noqa: E731
                on_step(SimulatedStep(tuple(range(len(requests))), step, steps, previews))
        seconds = time.perf_counter() - start
        return [
            GenerationResult(
                images=[_grey(request.width, request.height) for _ in range(request.num_images)],
                seed=request.seed,
                width=request.width,
                height=request.height,
                timings={"denoise": seconds},
                batch_images=images,
            )
            for request in requests
        ]


def _grey(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)
