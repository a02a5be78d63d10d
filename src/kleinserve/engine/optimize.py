"""Speed layered on the reference path, one switch per lever; with all off the engine is plain PyTorch.

- compile: regional torch.compile of the transformer's repeated blocks (diffusers' compile_repeated_blocks),
  so compiling takes seconds, not minutes; compiled code is kept in a persistent inductor cache.
- attention_backend: a diffusers attention backend ("_native_cudnn", "_native_flash", "flash", "_flash_3",
  ...); None keeps PyTorch's scaled_dot_product_attention choosing for itself.
The prompt-embedding cache lives in text.py (PromptEncoder's cache_size).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kleinserve.errors import InvalidRequest

log = logging.getLogger("kleinserve")


@dataclass(frozen=True)
class Optimizations:
    compile: bool = False
    attention_backend: str | None = None
    compile_cache_dir: Path | None = None  # TORCHINDUCTOR_CACHE_DIR unless the environment sets one

    @classmethod
    def for_device(cls, device: torch.device, compile: bool | None = None, **options) -> Optimizations:
        """compile=None means on for CUDA (where it pays), off for CPU (where it costs start-up time)."""
        return cls(compile=device.type == "cuda" if compile is None else compile, **options)

    def describe(self) -> str:
        levers = [
            f"attention={self.attention_backend or 'sdpa'}",
            f"compile={'on' if self.compile else 'off'}",
        ]
        return ", ".join(levers)


def apply_optimizations(transformer: torch.nn.Module, options: Optimizations) -> None:
    if options.attention_backend:
        set_attention_backend(transformer, check_attention_backend(options.attention_backend))
    if options.compile:
        if options.compile_cache_dir is not None:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(options.compile_cache_dir))
        transformer.compile_repeated_blocks(fullgraph=True)


def set_attention_backend(transformer: torch.nn.Module, name: str) -> None:
    """On this model's attention processors only. diffusers' set_attention_backend also changes the
    process-wide default, which would switch every other model (and stock pipelines) with it."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    default = _AttentionBackendRegistry._active_backend
    try:
        transformer.set_attention_backend(name)
    finally:
        _AttentionBackendRegistry.set_active_backend(default)


def check_attention_backend(name: str) -> str:
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = [backend.value for backend in AttentionBackendName]
    if name not in known:
        raise InvalidRequest(
            "--attention-backend", f"unknown backend {name!r}; diffusers knows: {', '.join(known)}"
        )
    return name
