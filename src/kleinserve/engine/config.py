"""How one engine is set up: where it runs, what it may load, how it batches and caches, which speed levers it
uses, and what it warms up. Whoever starts an engine fills it in (the server:
kleinserve/service/engine_startup.py, from its Settings); the engine package itself never reads settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kleinserve.engine.optimize import Optimizations


@dataclass(frozen=True)
class EngineConfig:
    device: str | torch.device | None = None  # None: CUDA when there is one, else CPU
    dtype: str | torch.dtype | None = None  # None: bf16 on CUDA, float32 elsewhere
    allow_download: bool = True  # fetch missing weights from the Hugging Face Hub
    max_batch_images: int = 8  # the most images one transformer batch holds
    prompt_cache_size: int = 0  # prompt embeddings kept (0: off)
    offload_text_encoder: bool = False  # text encoder in CPU memory, on `device` only to encode (text.py)
    optimizations: Optimizations = field(default_factory=Optimizations)  # none: the reference path
    warmup: bool = True  # generate once at start-up (engine/warmup.py) before serving
    warmup_sizes: tuple[tuple[int, int], ...] = ()  # (width, height); empty: warmup.default_warmup_sizes
