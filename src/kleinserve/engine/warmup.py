"""Getting an engine ready to serve: load it (building the demo checkpoint on first use) and warm it up."""

from __future__ import annotations

import logging
import time

import huggingface_hub

from kleinserve.engine.engine import Engine
from kleinserve.engine.loading import locate_checkpoint
from kleinserve.models import ModelSpec, require_variant
from kleinserve.request import build_request
from kleinserve.settings import Settings

log = logging.getLogger("kleinserve")

WARMUP_SIZE = 256


def load_engine(spec: ModelSpec, settings: Settings, demo: bool = False) -> Engine:
    if demo:
        ensure_demo_checkpoint(settings)
    start = time.perf_counter()
    engine = Engine.load(
        spec,
        device=settings.device,
        dtype=settings.dtype,
        allow_download=settings.allow_download,
        max_batch_images=settings.max_batch_images,
    )
    log.info("loaded %s from %s in %.1f s", spec.id, spec.source, time.perf_counter() - start)
    if settings.warmup:
        warm_up(engine)
    return engine


def check_weights(spec: ModelSpec, settings: Settings) -> None:
    """Fail fast, before the server starts, when a model's weights cannot be there: a local checkpoint of
    the wrong kind, or weights missing from the cache while downloading is off. Downloads happen later."""
    if spec.local_path is not None:
        require_variant(spec, spec.local_path)
    elif not settings.allow_download or huggingface_hub.constants.HF_HUB_OFFLINE:
        locate_checkpoint(spec, allow_download=False)


def warm_up(engine: Engine) -> None:
    """One small generation, so the first user does not pay for lazy initialisation (kernels, allocator)."""
    start = time.perf_counter()
    request = build_request(engine.spec, prompt="warm-up", width=WARMUP_SIZE, height=WARMUP_SIZE, seed=0)
    engine.generate([request])
    log.info("warmed up %s in %.1f s", engine.spec.id, time.perf_counter() - start)


def ensure_demo_checkpoint(settings: Settings) -> None:
    from kleinserve.models import Variant
    from kleinserve.tiny import write_tiny_checkpoint

    directory = settings.demo_checkpoint_dir
    if (directory / "model_index.json").is_file():
        return
    log.warning("building the demo checkpoint (tiny, random weights) in %s", directory)
    write_tiny_checkpoint(directory, Variant.DISTILLED)
