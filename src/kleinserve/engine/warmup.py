"""Getting an engine ready to serve: load it (building the demo checkpoint on first use) and warm it up."""

from __future__ import annotations

import logging
import time

import huggingface_hub
import torch

from kleinserve.engine.engine import Engine
from kleinserve.engine.loading import default_device, locate_checkpoint
from kleinserve.engine.optimize import Optimizations
from kleinserve.models import ModelSpec, require_variant
from kleinserve.request import build_request, parse_size
from kleinserve.settings import Settings

log = logging.getLogger("kleinserve")

WARMUP_SIZE = "256x256"
COMPILED_WARMUP_SIZES = ("1024x1024", "512x512", "1024x768", "768x1024")


def load_engine(spec: ModelSpec, settings: Settings, demo: bool = False) -> Engine:
    if demo:
        ensure_demo_checkpoint(settings)
    start = time.perf_counter()
    optimizations = optimizations_for(settings)
    engine = Engine.load(
        spec,
        device=settings.device,
        dtype=settings.dtype,
        allow_download=settings.allow_download,
        max_batch_images=settings.max_batch_images,
        prompt_cache_size=settings.prompt_cache_size,
        optimizations=optimizations,
    )
    log.info(
        "loaded %s from %s in %.1f s (%s)",
        spec.id, spec.source, time.perf_counter() - start, optimizations.describe(),
    )  # fmt: skip
    if settings.warmup:
        warm_up(engine, warmup_sizes(settings, optimizations))
    return engine


def optimizations_for(settings: Settings) -> Optimizations:
    device = torch.device(settings.device) if settings.device else default_device()
    return Optimizations.for_device(
        device,
        settings.compile,
        attention_backend=settings.attention_backend,
        compile_cache_dir=settings.data_dir / "compile-cache",
    )


def warmup_sizes(settings: Settings, optimizations: Optimizations) -> list[tuple[int, int]]:
    """The sizes generated once at start-up. Compiled code is per resolution, so with compile on the
    common sizes are warmed too, and no user pays for compiling them."""
    sizes = settings.warmup_sizes or (COMPILED_WARMUP_SIZES if optimizations.compile else (WARMUP_SIZE,))
    return [parse_size(size, "--warmup-size") for size in sizes]


def check_weights(spec: ModelSpec, settings: Settings) -> None:
    """Fail fast, before the server starts, when a model's weights cannot be there: a local checkpoint of
    the wrong kind, or weights missing from the cache while downloading is off. Downloads happen later."""
    if spec.local_path is not None:
        require_variant(spec, spec.local_path)
    elif not settings.allow_download or huggingface_hub.constants.HF_HUB_OFFLINE:
        locate_checkpoint(spec, allow_download=False)


def warm_up(engine: Engine, sizes: list[tuple[int, int]]) -> None:
    """A generation per size, so the first user does not pay for lazy initialisation or compiling."""
    engine.previewer  # noqa: B018 (fits the step-preview map now, not on the first streamed request)
    for width, height in sizes:
        start = time.perf_counter()
        request = build_request(engine.spec, prompt="warm-up", width=width, height=height, seed=0)
        engine.generate([request])
        log.info(
            "warmed up %s at %dx%d in %.1f s", engine.spec.id, width, height, time.perf_counter() - start
        )


def ensure_demo_checkpoint(settings: Settings) -> None:
    from kleinserve.models import Variant
    from kleinserve.tiny import write_tiny_checkpoint

    directory = settings.demo_checkpoint_dir
    if (directory / "model_index.json").is_file():
        return
    log.warning("building the demo checkpoint (tiny, random weights) in %s", directory)
    write_tiny_checkpoint(directory, Variant.DISTILLED)
