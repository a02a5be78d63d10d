"""Speed layered on the reference path, one switch per lever; with all off the engine is plain PyTorch.

- compile: regional torch.compile of the transformer's repeated blocks (diffusers' compile_repeated_blocks),
  so compiling takes seconds, not minutes; compiled code is kept in a persistent inductor cache.
- compile_decoder: torch.compile of the VAE decoder, on with compile on CUDA. On an H200 eager decoding spent
  52 of its 92 ms per 1024² image in GroupNorm (one reduction block per group: 32 blocks for 132 SMs);
  compiled, a decode took 36.0 ms instead of 85.7 (benchmarks/results/levers-h200.json). Off on CPU, where
  compiling costs more start-up than it saves.
- attention_backend: a diffusers attention backend ("_native_cudnn", "_native_flash", "flash", "_flash_3",
  ...); None keeps PyTorch's scaled_dot_product_attention choosing for itself.
- quantize / quantize_text_encoder: "fp8" turns the linears of the transformer's blocks / the text encoder's
  layers into fp8 ones (engine/fp8.py): fp8 matmuls where the GPU has them, weight-only fp8 elsewhere.
The prompt-embedding cache lives in text.py (PromptEncoder's cache_size).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kleinserve.engine.fp8 import FORMATS, quantize_component
from kleinserve.errors import InvalidRequest

log = logging.getLogger("kleinserve")


@dataclass(frozen=True)
class Optimizations:
    compile: bool = False
    compile_decoder: bool = False
    attention_backend: str | None = None
    compile_cache_dir: Path | None = None  # TORCHINDUCTOR_CACHE_DIR unless the environment sets one
    quantize: str | None = None  # the transformer's block linears: None or "fp8"
    quantize_text_encoder: str | None = None  # the text encoder's layer linears: None or "fp8"

    @classmethod
    def for_device(cls, device: torch.device, compile: bool | None = None, **options) -> Optimizations:
        """compile=None means on for CUDA (where it pays), off for CPU (where it costs start-up time); the
        decoder is compiled with the blocks on CUDA unless compile_decoder says otherwise."""
        compiling = device.type == "cuda" if compile is None else compile
        options.setdefault("compile_decoder", compiling and device.type == "cuda")
        return cls(compile=compiling, **options)

    @property
    def compiles(self) -> bool:
        """Whether anything is compiled (so warm-up has compiling to pay for)."""
        return self.compile or self.compile_decoder

    def describe(self) -> str:
        levers = [
            f"attention={self.attention_backend or 'sdpa'}",
            f"compile={'on' if self.compile else 'off'}{' +decoder' if self.compile_decoder else ''}",
            f"quantize={self.quantize or 'off'}",
            f"quantize_text_encoder={self.quantize_text_encoder or 'off'}",
        ]
        return ", ".join(levers)


def apply_optimizations(
    transformer: torch.nn.Module,
    options: Optimizations,
    text_encoder: torch.nn.Module | None = None,
    vae: torch.nn.Module | None = None,
) -> None:
    """In place; quantizing comes before compiling, so the compiled blocks are the quantized ones."""
    if options.quantize:
        check_quantize(options.quantize, "--quantize")
        quantize_component("transformer", transformer)
    if options.quantize_text_encoder:
        check_quantize(options.quantize_text_encoder, "--quantize-text-encoder")
        if text_encoder is None:
            raise ValueError("quantize_text_encoder needs the text encoder")
        quantize_component("text encoder", text_encoder)
    if options.attention_backend:
        set_attention_backend(transformer, check_attention_backend(options.attention_backend))
    compile_modules(transformer, vae, options)


def compile_modules(
    transformer: torch.nn.Module, vae: torch.nn.Module | None, options: Optimizations
) -> None:
    if options.compiles and options.compile_cache_dir is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(options.compile_cache_dir))
    if options.compile:
        transformer.compile_repeated_blocks(fullgraph=True)
    if options.compile_decoder:
        if vae is None:
            raise ValueError("compile_decoder needs the VAE")
        vae.decoder.compile()  # in place: the module and its state-dict keys stay as they are


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


def check_quantize(name: str, flag: str) -> None:
    if name not in FORMATS:
        raise InvalidRequest(flag, f"unknown quantization {name!r}; known: {', '.join(FORMATS)}")
