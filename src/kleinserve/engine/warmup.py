"""Warm-up: generations run once before an engine serves, so no user pays for lazy set-up or compiling.

Compiled code (engine/optimize.py) is specialised by torch.compile to what it has seen. A first call at one
resolution compiles for that shape; a second resolution recompiles with the token count dynamic; a first
batch of two recompiles with the batch dimension dynamic, which then covers every batch of 2 or more
(batch 1 keeps its own code: torch.compile specialises sizes 0 and 1). So with compile on, warm-up runs
one image at each warm-up size, then one 2-image batch at the smallest of them; after that every size
warmed and every batch the batcher can form (1..max_batch_images images) runs without compiling
(tests/engine/test_warmup.py counts). The order matters: the 2-image batch must come after all sizes.
"""

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
    return COMPILED_WARMUP_SIZES if config.optimizations.compiles else (WARMUP_SIZE,)


def warmup_plan(config: EngineConfig) -> list[tuple[int, int, int]]:
    """(width, height, images) of each warm-up batch, in order."""
    sizes = list(config.warmup_sizes or default_warmup_sizes(config))
    plan = [(width, height, 1) for width, height in sizes]
    if config.optimizations.compile and config.max_batch_images >= 2:
        width, height = min(sizes, key=lambda size: size[0] * size[1])
        plan.append((width, height, 2))
    return plan


def warm_up(engine: Engine, config: EngineConfig) -> None:
    engine.previewer  # noqa: B018 (fits the step-preview map now, not on the first streamed request)
    for width, height, images in warmup_plan(config):
        start = time.perf_counter()
        # The fewest steps: the step count changes no shape, so more steps would only cost time.
        request = build_request(
            engine.spec, prompt="warm-up", width=width, height=height, steps=engine.spec.min_steps,
            seed=0, num_images=images,
        )  # fmt: skip
        engine.generate([request])
        log.info(
            "warmed up %s at %dx%d x%d in %.1f s",
            engine.spec.id, width, height, images, time.perf_counter() - start,
        )  # fmt: skip
