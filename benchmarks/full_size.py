"""Full-size FLUX.2 [klein] 4B / 9B with random weights, built straight on the device (no download, no disk).

Shapes are the published configs (kleinserve/engine/architectures.py). The tokenizer is the tiny checkpoint's
byte-level one: prompts are padded to 512 tokens either way, so the text encoder does the same work.

`build(size)` returns kleinserve's engine and diffusers' pipeline over the same weights: the transformer and
VAE modules are shared, the engine's 27-layer text encoder is a copy of the full 36-layer model's first 27
layers. Both stay resident, so peak memory figures include both sides.
"""

from __future__ import annotations

import torch

from kleinserve.engine.architectures import QWEN3, SIZES, TRANSFORMER


def build_modules(size: str, device: str | torch.device, dtype: torch.dtype):
    """(full Qwen3ForCausalLM, transformer, VAE) with random weights, created directly in `dtype` on `device`
    ("meta" allocates nothing: for counting parameters)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shapes = SIZES[size]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            text_encoder = Qwen3ForCausalLM(Qwen3Config(**QWEN3, **shapes["text"]))
            transformer = Flux2Transformer2DModel(**TRANSFORMER, **shapes["transformer"])
            vae = AutoencoderKLFlux2()
    finally:
        torch.set_default_dtype(previous)
    return [m.eval().requires_grad_(False) for m in (text_encoder, transformer, vae)]


def build(size: str, device: torch.device, dtype: torch.dtype = torch.bfloat16, kv: bool = False):
    """(kleinserve Engine, diffusers pipeline) sharing one set of random full-size weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinKVPipeline, Flux2KleinPipeline

    from kleinserve.engine import Engine
    from kleinserve.engine.loading import TEXT_ENCODER_LAYERS, Components, use_kv_attention
    from kleinserve.models import Variant, resolve_model
    from kleinserve.tiny import SCHEDULER_CONFIG, byte_tokenizer

    text_encoder, transformer, vae = build_modules(size, device, dtype)
    if kv:
        use_kv_attention(transformer)
    tokenizer = byte_tokenizer()
    scheduler_config = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
    pipeline_class = Flux2KleinKVPipeline if kv else Flux2KleinPipeline
    pipe = pipeline_class(FlowMatchEulerDiscreteScheduler(**scheduler_config), vae, text_encoder, tokenizer,
                          transformer, is_distilled=True)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    ours = _truncated(text_encoder, TEXT_ENCODER_LAYERS)
    variant = Variant.KV if kv else Variant.DISTILLED
    components = Components(
        tokenizer, ours, transformer, vae, variant=variant, device=torch.device(device), dtype=dtype
    )
    spec = resolve_model(SIZES[size]["spec"] + ("-kv" if kv else ""))
    return Engine(spec, components), pipe


def _truncated(full: torch.nn.Module, layers: int) -> torch.nn.Module:
    """The engine's text encoder as the engine loads it from a checkpoint: a Qwen3Model of the first
    `layers` layers and no final norm, holding a copy of `full`'s weights. (Sharing the layer modules
    would be cheaper, but transformers records hidden states with hooks on them, so two models over one
    set of layers record each other's states.)"""
    import copy

    from transformers import Qwen3Model

    config = copy.deepcopy(full.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    parameter = next(full.parameters())
    with torch.device(parameter.device):
        model = Qwen3Model(config).to(parameter.dtype)
    model.load_state_dict(full.model.state_dict(), strict=False)  # layers past `layers` are not needed
    model.norm = torch.nn.Identity()
    return model.eval().requires_grad_(False)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
