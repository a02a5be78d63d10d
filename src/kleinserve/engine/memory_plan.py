"""Memory you can read before you start: each component's weights in bytes, in the chosen precision and
placement, counted exactly from the real configs on the meta device (nothing is allocated, no weights needed).

Configs come from the checkpoint when it is on disk (a local directory, or the Hugging Face cache), else from
the published shapes (architectures.py). Bytes are the parameters' (buffers, a few KB of RoPE frequencies and
BatchNorm statistics, are left out). Activations are not counted: `Allowance` is a stated estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kleinserve.engine import architectures
from kleinserve.engine.fp8 import REPEATED_BLOCKS
from kleinserve.engine.loading import (
    locate_checkpoint,
    quiet_libraries,
    read_text_encoder_config,
    truncated_text_config,
)
from kleinserve.engine.text import HIDDEN_STATE_LAYERS, MAX_TOKENS
from kleinserve.errors import WeightsNotFound
from kleinserve.models import ModelSpec

GB = 1e9  # decimal gigabytes, as in "24 GB card" (a 24 GiB card holds 25.8 GB)
FP8_BYTES, FP8_SCALE_BYTES = 1, 4


def fp8_converts(component: str, name: str, module: torch.nn.Module) -> bool:
    """The fp8 lever's rule, as this plan counts it: every nn.Linear inside the transformer's repeated blocks
    (double and single stream) and the text encoder's decoder layers stores its weight in float8 (1 byte an
    element) plus one float32 scale per output channel. Its bias, and everything else (embeddings, norms, the
    modulation and projections outside the blocks, the VAE, the safety checker) stay in the model's dtype."""
    blocks = REPEATED_BLOCKS.get(component, ())
    return isinstance(module, torch.nn.Linear) and name.split(".")[0] in blocks


def weight_bytes(component: str, model: torch.nn.Module, quantize: str | None) -> tuple[int, int, int]:
    """(parameters, bytes, parameters stored in fp8) of `model` as the `quantize` lever leaves it."""
    params = total = converted = 0
    seen: set[int] = set()
    for name, module in model.named_modules():
        fp8 = quantize == "fp8" and fp8_converts(component, name, module)
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:  # tied weights are stored once
                continue
            seen.add(id(parameter))
            params += parameter.numel()
            if fp8 and parameter_name == "weight":
                converted += parameter.numel()
                total += parameter.numel() * FP8_BYTES + parameter.shape[0] * FP8_SCALE_BYTES
            else:
                total += parameter.numel() * parameter.element_size()
    return params, total, converted


@dataclass(frozen=True)
class Component:
    name: str  # "text encoder", "transformer", "VAE", "safety checker"
    params: int | None  # None: unknown
    bytes: int | None
    precision: str  # "bf16", "fp8+bf16" (fp8 linears, the rest bf16), "fp32", "unknown"
    placement: str  # "gpu", or "cpu" for an offloaded part that visits the GPU only to encode
    fp8_params: int = 0
    source: str = ""  # where its config came from


@dataclass(frozen=True)
class Allowance:
    """Memory beyond the weights, at 1024x1024, batch 1. An estimate, not measured: the largest tensors are
    the VAE decoder's at full resolution (256 channels x 1024^2 in bf16 = 0.5 GB each, a few alive at once:
    ~2 GB), the transformer's at 4608 tokens (its fused projection, 36864 channels: 0.34 GB for 9B), plus the
    CUDA context (~0.5 GB). Encoding one 512-token prompt keeps 28 hidden states (0.12 GB for 9B)."""

    generating: float = 3.0 * GB  # denoising and decoding
    encoding: float = 0.5 * GB  # the text encoder on a prompt

    def describe(self) -> str:
        return (
            f"{self.generating / GB:.2f} GB activations while generating at 1024x1024 batch 1 and "
            f"{self.encoding / GB:.2f} GB while encoding a prompt (estimates, not measured; the CUDA context "
            "included)"
        )


@dataclass(frozen=True)
class ModelPlan:
    model: str
    dtype: str
    quantize: str | None
    quantize_text_encoder: str | None
    offload: str | None
    components: tuple[Component, ...]
    prompt_cache_bytes: int  # the prompt cache full, on the GPU
    prompt_cache_size: int

    def weights_on_gpu(self) -> int:
        """Weights resident on the GPU while denoising and decoding."""
        return sum(c.bytes or 0 for c in self.components if c.placement == "gpu")

    def weights_while_encoding(self) -> int:
        """Weights on the GPU while a new prompt is encoded: an offloaded text encoder is there too."""
        return self.weights_on_gpu() + sum(c.bytes or 0 for c in self.components if c.placement == "cpu")

    def peak(self, allowance: Allowance) -> int:
        generating = self.weights_on_gpu() + self.prompt_cache_bytes + allowance.generating
        encoding = self.weights_while_encoding() + self.prompt_cache_bytes + allowance.encoding
        return int(max(generating, encoding))

    def unknown(self) -> list[str]:
        return [c.name for c in self.components if c.bytes is None]

    def as_dict(self, allowance: Allowance) -> dict:
        return {
            **{k: v for k, v in asdict(self).items() if k != "components"},
            "components": [asdict(c) for c in self.components],
            "weights_on_gpu_bytes": self.weights_on_gpu(),
            "weights_while_encoding_bytes": self.weights_while_encoding(),
            "peak_bytes": self.peak(allowance),
            "unknown": self.unknown(),
        }


def plan_model(
    spec: ModelSpec,
    dtype: torch.dtype = torch.bfloat16,
    quantize: str | None = None,
    offload: str | None = None,
    prompt_cache_size: int = 16,
    quantize_text_encoder: str | None = None,
    classifier: Component | None = None,
) -> ModelPlan:
    """The plan for `spec`'s text encoder, transformer and VAE (and `classifier`, from plan_classifier);
    `quantize` and `quantize_text_encoder` are serve's --quantize and --quantize-text-encoder."""
    directory, source = configs_of(spec)
    text_encoder, transformer, vae = meta_modules(directory, spec.size, dtype)
    components = []
    for name, module in (("text encoder", text_encoder), ("transformer", transformer), ("VAE", vae)):
        lever = quantize_text_encoder if name == "text encoder" else quantize
        params, size, fp8 = weight_bytes(name, module, lever)
        precision = f"fp8+{short_dtype(dtype)}" if fp8 else short_dtype(dtype)
        placement = "cpu" if name == "text encoder" and offload == "text-encoder" else "gpu"
        components.append(Component(name, params, size, precision, placement, fp8, source))
    if classifier is not None:
        components.append(classifier)
    width = len(HIDDEN_STATE_LAYERS) * text_encoder.config.hidden_size
    cache = prompt_cache_size * MAX_TOKENS * width * torch.empty((), dtype=dtype).element_size()
    return ModelPlan(spec.id, str(dtype).removeprefix("torch."), quantize, quantize_text_encoder, offload,
                     tuple(components), cache, prompt_cache_size)  # fmt: skip


def configs_of(spec: ModelSpec) -> tuple[Path | None, str]:
    """The checkpoint directory whose configs to read, or None for the published shapes; and which it is."""
    if spec.local_path is not None:
        return spec.local_path, f"configs read from {spec.local_path}"
    try:
        directory = locate_checkpoint(spec, allow_download=False)
    except WeightsNotFound:
        return None, "published configs (engine/architectures.py; the weights are not in the local cache)"
    return directory, f"configs read from the Hugging Face cache ({directory})"


def meta_modules(directory: Path | None, size: str | None, dtype: torch.dtype) -> list[torch.nn.Module]:
    """The engine's text encoder (27 layers, no final norm), transformer and VAE on the meta device, in
    `dtype` as loading leaves them."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Model

    if directory is not None:
        text_config = read_text_encoder_config(directory / "text_encoder")
        transformer_config = Flux2Transformer2DModel.load_config(directory / "transformer")
        vae_config = AutoencoderKLFlux2.load_config(directory / "vae")
    else:
        text_config = truncated_text_config(architectures.text_encoder_config(size))
        transformer_config, vae_config = architectures.transformer_config(size), {}
    with torch.device("meta"):
        text_encoder = Qwen3Model(text_config)
        text_encoder.norm = torch.nn.Identity()
        transformer = Flux2Transformer2DModel.from_config(transformer_config)
        vae = AutoencoderKLFlux2.from_config(vae_config)
    with quiet_libraries():  # diffusers warns that .to(dtype) keeps no module in float32 (none is to be)
        return [module.to(dtype) for module in (text_encoder, transformer, vae)]


def plan_classifier(config, source: str) -> Component:
    """The safety checker from its transformers config (None: unknown), in the dtype it loads in: its config's
    (from_pretrained's "auto"), float32 when the config names none. It runs on the GPU when there is one."""
    if config is None:
        return Component("safety checker", None, None, "unknown", "gpu", source=source)
    from transformers import AutoModelForImageClassification

    name = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    dtype = getattr(torch, name)
    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(config).to(dtype)
    params, size, _ = weight_bytes("safety checker", model, None)
    return Component("safety checker", params, size, short_dtype(dtype), "gpu", source=source)


def short_dtype(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))
