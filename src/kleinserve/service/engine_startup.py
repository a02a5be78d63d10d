"""Engines for the server: its Settings turned into an EngineConfig, the demo checkpoint built on first use,
weights checked before start, the engine loaded and warmed up. The engine package never sees Settings.
"""

from __future__ import annotations

import logging
import time

import huggingface_hub
import torch

from kleinserve.engine.config import EngineConfig
from kleinserve.engine.engine import Engine
from kleinserve.engine.loading import default_device, locate_checkpoint
from kleinserve.engine.optimize import Optimizations
from kleinserve.engine.single_file import check_single_file
from kleinserve.engine.warmup import warm_up
from kleinserve.errors import InvalidCheckpoint
from kleinserve.models import ModelSpec, require_variant
from kleinserve.request import parse_size
from kleinserve.settings import Settings

log = logging.getLogger("kleinserve")


def load_engine(spec: ModelSpec, settings: Settings, demo: bool = False) -> Engine:
    if demo:
        ensure_demo_checkpoint(settings)
    config = engine_config(settings)
    start = time.perf_counter()
    engine = Engine.load(spec, config)
    log.info(
        "loaded %s from %s in %.1f s (%s)",
        spec.id, spec.source, time.perf_counter() - start, config.optimizations.describe(),
    )  # fmt: skip
    if config.warmup:
        warm_up(engine, config)
    return engine


def engine_config(settings: Settings) -> EngineConfig:
    device = torch.device(settings.device) if settings.device else default_device()
    optimizations = Optimizations.for_device(
        device,
        settings.compile,
        attention_backend=settings.attention_backend,
        quantize=settings.quantize,
        quantize_text_encoder=settings.quantize_text_encoder,
        compile_cache_dir=settings.data_dir / "compile-cache",
    )
    return EngineConfig(
        device=device,
        dtype=settings.dtype,
        allow_download=settings.allow_download,
        max_batch_images=settings.max_batch_images,
        prompt_cache_size=settings.prompt_cache_size,
        offload_text_encoder=settings.offload == "text-encoder",
        optimizations=optimizations,
        warmup=settings.warmup,
        warmup_sizes=tuple(parse_size(size, "--warmup-size") for size in settings.warmup_sizes),
    )


def check_weights(spec: ModelSpec, settings: Settings) -> None:
    """Fail fast, before the server starts, when a model's weights cannot be there: a local checkpoint of
    the wrong kind, or weights missing from the cache while downloading is off. Downloads happen later."""
    if spec.transformer_file is not None:
        try:
            check_single_file(spec.transformer_file)
        except InvalidCheckpoint as exc:
            raise InvalidCheckpoint(f"--model {spec.id}={spec.transformer_file}: {exc}") from exc
    if spec.local_path is not None:
        require_variant(spec, spec.local_path)
    elif not settings.allow_download or huggingface_hub.constants.HF_HUB_OFFLINE:
        locate_checkpoint(spec, allow_download=False)


def ensure_demo_checkpoint(settings: Settings) -> None:
    from kleinserve.models import Variant
    from kleinserve.tiny import write_tiny_checkpoint

    directory = settings.demo_checkpoint_dir
    if (directory / "model_index.json").is_file():
        return
    log.warning("building the demo checkpoint (tiny, random weights) in %s", directory)
    write_tiny_checkpoint(directory, Variant.DISTILLED)
