"""Warm-up: generations run once before an engine serves, so no user pays for lazy set-up or compiling."""

from __future__ import annotations

import logging
import time

from kleinserve.engine.config import EngineConfig
from kleinserve.engine.engine import Engine
from kleinserve.request import build_request

log = logging.getLogger("kleinserve")

WARMUP_SIZE = (256, 256)
COMPILED_WARMUP_SIZES = ((1024, 1024), (512, 512), (1024, 768), (768, 1024))


def default_warmup_sizes(config: EngineConfig) -> tuple[tuple[int, int], ...]:
    """Compiled code is per resolution, so with compile on the common sizes are warmed."""
    return COMPILED_WARMUP_SIZES if config.optimizations.compile else (WARMUP_SIZE,)


def warmup_plan(config: EngineConfig) -> list[tuple[int, int, int]]:
    """(width, height, images) of each warm-up batch, in order."""
    return [(width, height, 1) for width, height in config.warmup_sizes or default_warmup_sizes(config)]


def warm_up(engine: Engine, config: EngineConfig) -> None:
    engine.previewer  # noqa: B018 (fits the step-preview map now, not on the first streamed request)
    for width, height, images in warmup_plan(config):
        start = time.perf_counter()
        request = build_request(
            engine.spec, prompt="warm-up", width=width, height=height, seed=0, num_images=images
        )
        engine.generate([request])
        log.info(
            "warmed up %s at %dx%d x%d in %.1f s",
            engine.spec.id, width, height, images, time.perf_counter() - start,
        )  # fmt: skip
