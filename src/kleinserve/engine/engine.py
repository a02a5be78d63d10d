"""The engine: validated GenerationRequests in, images out. Synchronous; knows nothing of HTTP or jobs.

Requests that share a shape (size, steps, guidance, reference layout) run as one batch; others in
the same call run as further batches. Image i of a request draws its noise from its own generator
seeded with seed + i, so no image depends on its batch-mates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from kleinserve.batch_policy import batch_key, plan_batches
from kleinserve.engine.config import EngineConfig
from kleinserve.engine.loading import (
    Components,
    default_device,
    load_components,
    locate_checkpoint,
    resolve_dtype,
)
from kleinserve.engine.lora import LoraSlots, ScaledLora
from kleinserve.engine.lora_cache import LoraCache
from kleinserve.engine.lora_file import LoraWeights, fit_to_model, read_lora_file
from kleinserve.engine.optimize import Optimizations, apply_optimizations
from kleinserve.engine.previews import LatentPreviewer
from kleinserve.engine.references import encode_references
from kleinserve.engine.sampling import DenoiseBatch, Denoiser, seeded_noise
from kleinserve.engine.text import PromptEncoder, text_position_ids
from kleinserve.engine.vae import LatentCodec, pack, unpack
from kleinserve.errors import GenerationStopped, InvalidLora
from kleinserve.models import ModelSpec, Variant, require_variant
from kleinserve.request import GenerationRequest, GenerationResult

OutputType = Literal["uint8", "pil", "float"]


@dataclass(frozen=True)
class StepProgress:
    request_indices: tuple[int, ...]  # positions in the list given to generate()
    step: int  # 1-based, after the step finished
    total_steps: int
    # Small RGB pictures of the current estimate, one per image of the batch in request order; computed
    # only when called, and only valid during the callback (on the engine thread).
    previews: Callable[[], list[np.ndarray]]


ProgressCallback = Callable[[StepProgress], None]
LoraSource = Callable[[str], Path]  # a request's LoRA path -> a local safetensors file
DEFAULT_LORA_CACHE_BYTES = 1 << 30


def local_lora_file(source: str) -> Path:
    """Without a service's resolver: the path of a local file, as given."""
    path = Path(source)
    if not path.is_file():
        raise InvalidLora(f"{source} is not a file")
    return path


class Engine:
    def __init__(
        self,
        spec: ModelSpec,
        components: Components,
        max_batch_images: int = 8,
        prompt_cache_size: int = 0,
        offload_text_encoder: bool = False,
    ):
        self.spec = spec
        self.components = components
        self.max_batch_images = max_batch_images
        self.optimizations = Optimizations()  # none: the reference path
        run_on = components.device if offload_text_encoder else None
        self.prompts = PromptEncoder(components.tokenizer, components.text_encoder, prompt_cache_size, run_on)
        self.codec = LatentCodec(components.vae)
        self.denoiser = Denoiser(components.transformer)
        self.lora_slots = LoraSlots(components.transformer)
        self.lora_source: LoraSource = local_lora_file
        self.lora_cache = LoraCache(DEFAULT_LORA_CACHE_BYTES)

    @classmethod
    def load(cls, spec: ModelSpec, config: EngineConfig | None = None, **options) -> Engine:
        """Load `spec`'s weights as `config` says; `options` (EngineConfig fields: device=..., dtype=...,
        optimizations=...) override it."""
        config = replace(config or EngineConfig(), **options)
        device = torch.device(config.device) if config.device is not None else default_device()
        checkpoint = locate_checkpoint(spec, allow_download=config.allow_download)
        variant = require_variant(spec, checkpoint)
        text_device = torch.device("cpu") if config.offload_text_encoder else None
        dtype = resolve_dtype(config.dtype, device)
        components = load_components(
            checkpoint, variant, device, dtype, spec.transformer_file, text_encoder_device=text_device
        )
        apply_optimizations(
            components.transformer, config.optimizations, components.text_encoder, components.vae
        )
        engine = cls(
            spec, components, config.max_batch_images, config.prompt_cache_size, config.offload_text_encoder
        )
        engine.optimizations = config.optimizations
        engine.lora_slots.always = config.optimizations.compile  # one compiled graph for every LoRA set
        return engine

    @cached_property
    def previewer(self) -> LatentPreviewer:
        """Fitted on first use (the server's warm-up), on the engine thread."""
        return LatentPreviewer.fit(self.codec)

    @property
    def device(self) -> torch.device:
        return self.components.device

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        output: OutputType = "uint8",
    ) -> list[GenerationResult]:
        """One result per request, in order; images as HxWx3 uint8 arrays, PIL images or floats in [0, 1].

        `on_step` hears each finished denoising step; `should_stop` is asked at each step boundary, and
        when it answers True the call ends with GenerationStopped (a cancelled batch frees the engine)."""
        results: list[GenerationResult | None] = [None] * len(requests)
        for indices in plan_batches(self.spec, requests, self.max_batch_images):
            batch = [requests[i] for i in indices]
            progress = partial(_report_step, on_step, tuple(indices)) if on_step else None
            for index, result in zip(
                indices, self._run_batch(batch, progress, should_stop, output), strict=True
            ):
                results[index] = result
        return results  # type: ignore[return-value]

    def batch_key(self, request: GenerationRequest) -> str:
        """Requests with equal keys can share a batch (batch_policy.py decides)."""
        return batch_key(self.spec, request)

    def load_lora(self, source: str) -> LoraWeights:
        """A request's LoRA, parsed and checked against this model (InvalidLora if it does not fit), from the
        in-memory cache when it holds it."""
        return self.load_lora_file(self.lora_source(source))

    def load_lora_file(self, path: Path) -> LoraWeights:
        stat = path.stat()
        like = torch.empty(0, dtype=self.components.transformer.dtype, device=self.device)
        return self.lora_cache.get(
            (str(path.resolve()), stat.st_size, stat.st_mtime_ns),
            lambda: fit_to_model(read_lora_file(path), self.lora_slots.shapes, path.name, like),
        )

    def _adapters(self, requests: list[GenerationRequest]) -> list[list[ScaledLora]]:
        """Per image of the batch, the LoRAs its request asked for."""
        per_image = []
        for request in requests:
            loras = [ScaledLora(self.load_lora(choice.path), choice.scale) for choice in request.loras]
            per_image += [loras] * request.num_images
        return per_image

    def _run_batch(self, requests, on_step, should_stop, output: OutputType) -> list[GenerationResult]:
        timings: dict[str, float] = {}
        first = requests[0]
        adapters = [[] for request in requests for _ in range(request.num_images)]  # per image: none
        if any(request.loras for request in requests):
            with self._stage(timings, "lora"):
                adapters = self._adapters(requests)
        with self._stage(timings, "text"):
            embeds, negative = self._encode_prompts(requests)
        references = reference_ids = None
        with self._stage(timings, "references"):
            if first.images:
                references, reference_ids = self._reference_tokens(requests)
        height, width = (
            first.height // self.codec.pixels_per_token,
            first.width // self.codec.pixels_per_token,
        )
        batch = DenoiseBatch(
            latents=self._noise(requests, height, width, embeds.dtype),
            height=height,
            width=width,
            prompt_embeds=embeds,
            text_ids=text_position_ids(embeds.shape[1], self.device),
            steps=first.steps,
            guidance=first.guidance,
            negative_embeds=negative,
            references=references,
            reference_ids=reference_ids,
            kv_cache_references=self.components.variant is Variant.KV,
        )
        step_callback = None
        if on_step is not None or should_stop is not None:

            def step_callback(step: int, total: int, denoised) -> None:
                if on_step is not None:
                    on_step(step, total, lambda: self.previewer.render(denoised(), height, width))
                if should_stop is not None and should_stop():
                    raise GenerationStopped(f"stopped after step {step} of {total}")

        with self._stage(timings, "denoise"), self.lora_slots.apply(adapters):
            latents = self.denoiser.run(batch, step_callback)
        with self._stage(timings, "decode"):
            images = _to_output(self.codec.decode(unpack(latents, height, width)), output)
        results, offset = [], 0
        for request in requests:
            chunk = images[offset : offset + request.num_images]
            offset += request.num_images
            results.append(
                GenerationResult(
                    chunk,
                    request.seed,
                    request.width,
                    request.height,
                    dict(timings),
                    self._text_tokens(request),
                    batch_images=len(images),
                )
            )
        return results

    def _text_tokens(self, request: GenerationRequest) -> int:
        tokens = self.prompts.count_tokens(request.prompt)
        if self.spec.uses_cfg and request.guidance > 1.0:
            tokens += self.prompts.count_tokens(request.negative_prompt)
        return tokens

    def _encode_prompts(self, requests: list[GenerationRequest]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt (and, with CFG, negative prompt) embeddings, one row per image."""
        counts = torch.tensor([r.num_images for r in requests], device=self.device)
        embeds = self.prompts.encode([r.prompt for r in requests]).repeat_interleave(counts, dim=0)
        if not (self.spec.uses_cfg and requests[0].guidance > 1.0):
            return embeds, None
        negative = self.prompts.encode([r.negative_prompt for r in requests])
        return embeds, negative.repeat_interleave(counts, dim=0)

    def _reference_tokens(self, requests: list[GenerationRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, ids = [], None
        for request in requests:
            request_tokens, ids = encode_references(self.codec, request.images)
            tokens.append(request_tokens.expand(request.num_images, -1, -1))
        return torch.cat(tokens), ids

    def _noise(self, requests, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        channels = self.components.transformer.config.in_channels
        noise = [
            seeded_noise(request.seed + i, channels, height, width, dtype)
            for request in requests
            for i in range(request.num_images)
        ]
        return pack(torch.cat(noise).to(self.device))

    @contextmanager
    def _stage(self, timings: dict[str, float], name: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[name] = time.perf_counter() - start


def _report_step(
    on_step: ProgressCallback, indices: tuple[int, ...], step: int, total: int, previews
) -> None:
    on_step(StepProgress(indices, step, total, previews))


def _to_output(pixels: torch.Tensor, output: OutputType) -> list:
    """(B, 3, H, W) in [0, 1] -> per-image HxWx3 arrays (rounded to uint8 on the device) or PIL images."""
    pixels = pixels.permute(0, 2, 3, 1)
    if output == "float":
        return list(pixels.float().cpu().numpy())
    # contiguous on the device: otherwise each HxWx3 array keeps the planar (3, H, W) memory order, and every
    # encoder first pays a strided copy on the CPU (~20 ms at 1024^2, more than fpng's whole PNG encode)
    arrays = list((pixels.float() * 255).round().to(torch.uint8).contiguous().cpu().numpy())
    if output == "pil":
        return [Image.fromarray(array) for array in arrays]
    return arrays
