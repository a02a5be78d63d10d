"""Finding and loading a checkpoint: a local diffusers directory, or a Hugging Face repo through its cache;
the transformer from the tree's transformer/ folder or from a BFL single file (single_file.py).

Only what sampling uses is loaded: the Qwen3 text encoder is built with 27 layers (FLUX.2 reads
hidden states 9, 18 and 27) and without its final norm and LM head.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from kleinserve.engine.single_file import load_single_file_transformer
from kleinserve.errors import InvalidCheckpoint, WeightsNotFound
from kleinserve.models import ModelSpec, Variant

TEXT_ENCODER_LAYERS = 27
CHECKPOINT_PATTERNS = [
    "model_index.json",
    "scheduler/*",
    "text_encoder/*",
    "tokenizer/*",
    "transformer/*",
    "vae/*",
]
# With the transformer in a single file, the tree's transformer weights are not needed: only its config.
TREE_PATTERNS_BESIDE_SINGLE_FILE = [
    "transformer/config.json" if pattern == "transformer/*" else pattern for pattern in CHECKPOINT_PATTERNS
]
DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


@dataclass
class Components:
    tokenizer: object
    text_encoder: torch.nn.Module  # Qwen3Model, layers 1..27, final norm replaced by identity
    transformer: torch.nn.Module  # diffusers Flux2Transformer2DModel
    vae: torch.nn.Module  # diffusers AutoencoderKLFlux2
    variant: Variant
    device: torch.device
    dtype: torch.dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA, float32 elsewhere, unless the caller says otherwise."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype.lower() not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; use one of: bfloat16, float16, float32")
    return DTYPES[dtype.lower()]


def locate_checkpoint(spec: ModelSpec, allow_download: bool = True) -> Path:
    """The directory holding `spec`'s diffusers tree; from the HF cache, downloading if allowed and online."""
    if spec.local_path is not None:
        return spec.local_path
    from huggingface_hub import constants, snapshot_download

    patterns = TREE_PATTERNS_BESIDE_SINGLE_FILE if spec.transformer_file else CHECKPOINT_PATTERNS
    try:
        return Path(snapshot_download(spec.hf_repo, allow_patterns=patterns, local_files_only=True))
    except Exception as cached_miss:  # not in the cache (or a partial cache)
        reason = f"not in the cache ({type(cached_miss).__name__})"
    if allow_download and not constants.HF_HUB_OFFLINE:
        try:
            return Path(snapshot_download(spec.hf_repo, allow_patterns=patterns))
        except Exception as download_error:
            reason += f"; download failed: {_first_line(download_error)}"
    else:
        reason += "; downloading is off (HF_HUB_OFFLINE or --no-download)"
    raise WeightsNotFound(_weights_help(spec, reason, constants.HF_HUB_CACHE, patterns))


def _weights_help(spec: ModelSpec, reason: str, cache_dir: str, patterns: list[str]) -> str:
    gated = (
        "" if spec.license == "apache-2.0" else " (gated: accept the license on its page and set HF_TOKEN)"
    )
    includes = " ".join(f"'{p}'" for p in patterns)
    return (
        f"no weights for {spec.id}: looked for Hugging Face repo {spec.hf_repo} in {cache_dir}, {reason}."
        f" Get them on a machine with internet: `hf download {spec.hf_repo} --include {includes}`{gated},"
        " then copy that cache here (or set HF_HOME to it), or pass a local checkpoint directory as the model"
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def load_components(
    checkpoint: Path,
    variant: Variant,
    device: torch.device,
    dtype: torch.dtype,
    transformer_file: Path | None = None,
    text_encoder_device: torch.device | None = None,
) -> Components:
    """Load tokenizer, truncated text encoder, transformer and VAE from a diffusers directory
    whose model_index.json declares `variant`; the transformer from `transformer_file` when given. The
    text encoder goes to `text_encoder_device` when given (the CPU, for an offloaded one: it visits `device`
    only to encode), the rest to `device`."""
    from diffusers import AutoencoderKLFlux2
    from transformers import AutoTokenizer

    for part in ("text_encoder", "tokenizer", "transformer", "vae"):
        if not (checkpoint / part).is_dir():
            raise InvalidCheckpoint(
                f"{checkpoint} has no {part}/ folder; it is not a complete diffusers checkpoint"
            )
    with quiet_libraries():
        tokenizer = AutoTokenizer.from_pretrained(checkpoint / "tokenizer")
        text_encoder = load_text_encoder(checkpoint / "text_encoder", dtype)
        transformer = load_transformer(checkpoint, dtype, transformer_file)
        vae = AutoencoderKLFlux2.from_pretrained(checkpoint / "vae", dtype=dtype)
    if variant is Variant.KV:
        use_kv_attention(transformer)
    text_encoder = text_encoder.to(text_encoder_device or device)
    transformer, vae = transformer.to(device), vae.to(device)
    modules = [m.eval().requires_grad_(False) for m in (text_encoder, transformer, vae)]
    return Components(tokenizer, *modules, variant=variant, device=device, dtype=dtype)


def load_transformer(checkpoint: Path, dtype: torch.dtype, transformer_file: Path | None = None):
    """The tree's transformer/ weights; or `transformer_file`; or, when transformer/ holds only its config,
    the BFL single file at the tree's root (`flux-2-klein-4b.safetensors` in the official repos)."""
    from diffusers import Flux2Transformer2DModel

    single = transformer_file or root_single_file(checkpoint)
    if single is not None:
        return load_single_file_transformer(single, checkpoint / "transformer", dtype)
    return Flux2Transformer2DModel.from_pretrained(checkpoint / "transformer", dtype=dtype)


def root_single_file(checkpoint: Path) -> Path | None:
    """The single-file transformer at the root of a tree whose transformer/ has no weights, else None."""
    if any(
        path.name.startswith("diffusion_pytorch_model") for path in (checkpoint / "transformer").iterdir()
    ):
        return None
    candidates = sorted(checkpoint.glob("*.safetensors"))
    if len(candidates) > 1:
        names = ", ".join(path.name for path in candidates)
        raise InvalidCheckpoint(
            f"{checkpoint}/transformer/ has no weights and the root holds several single files ({names});"
            f" name one: --model ID={checkpoint}/FILE"
        )
    if not candidates:
        raise InvalidCheckpoint(
            f"{checkpoint} has no transformer weights: neither"
            " transformer/diffusion_pytorch_model*.safetensors nor a single file such as"
            " flux-2-klein-4b.safetensors at its root"
        )
    return candidates[0]


def load_text_encoder(directory: Path, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import Qwen3Model

    model = Qwen3Model.from_pretrained(directory, config=read_text_encoder_config(directory), dtype=dtype)
    # hidden_states[27] must be the raw output of layer 27; a truncated model would normalize its last one.
    model.norm = torch.nn.Identity()
    return model


def read_text_encoder_config(directory: Path):
    """The checkpoint's Qwen3 config, cut to the layers FLUX.2 reads."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise InvalidCheckpoint(
            f"{directory}/config.json is not a usable text encoder config: {exc}"
        ) from exc
    if config.num_hidden_layers < TEXT_ENCODER_LAYERS:
        raise InvalidCheckpoint(
            f"{directory} has {config.num_hidden_layers} layers; FLUX.2 needs at least {TEXT_ENCODER_LAYERS}"
        )
    return truncated_text_config(config)


def truncated_text_config(config):
    """`config` (a Qwen3 config, changed in place) with only the first TEXT_ENCODER_LAYERS layers."""
    config.num_hidden_layers = TEXT_ENCODER_LAYERS
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:TEXT_ENCODER_LAYERS]
    return config


def use_kv_attention(transformer: torch.nn.Module) -> None:
    """Attention processors that can extract and reuse reference K/V (they behave as usual otherwise)."""
    from diffusers.models.transformers.transformer_flux2 import (
        Flux2KVAttnProcessor,
        Flux2KVParallelSelfAttnProcessor,
    )

    for block in transformer.transformer_blocks:
        block.attn.set_processor(Flux2KVAttnProcessor())
    for block in transformer.single_transformer_blocks:
        block.attn.set_processor(Flux2KVParallelSelfAttnProcessor())


@contextlib.contextmanager
def quiet_libraries():
    """Keep transformers/diffusers from warning about expected things (the unused text-encoder layers)
    and from drawing progress bars for loads and saves that take milliseconds to seconds."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous[0])
        diffusers_logging.set_verbosity(previous[1])
        if bars_were_on:
            transformers_logging.enable_progress_bar()
