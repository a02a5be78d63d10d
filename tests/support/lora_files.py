"""LoRA files made in tests from a checkpoint's transformer: random A/B in the naming conventions diffusers'
Flux2 loader reads (diffusers/PEFT keys with or without adapter metadata, BFL/ComfyUI `diffusion_model.*`,
kohya `lora_unet_*` with `.alpha`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# Every kind of linear a FLUX.2 LoRA may target, including the batch-shared timestep and modulation ones.
PEFT_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.to_add_out",
    "ff.linear_in", "ff_context.linear_out", "attn.to_qkv_mlp_proj", "attn.to_out",
    "x_embedder", "context_embedder", "proj_out", "norm_out.linear",
    "time_guidance_embed.timestep_embedder.linear_1", "double_stream_modulation_img.linear",
    "single_stream_modulation.linear",
)  # fmt: skip


def linear_shapes(checkpoint: Path) -> dict[str, tuple[int, int]]:
    """Each nn.Linear of the checkpoint's transformer: name -> (in, out)."""
    from diffusers import Flux2Transformer2DModel

    model = Flux2Transformer2DModel.from_pretrained(checkpoint / "transformer")
    return {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def _pair(generator, rank: int, shape: tuple[int, int], strength: float):
    fan_in, fan_out = shape
    down = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
    up = torch.randn(fan_out, rank, generator=generator) * strength / rank**0.5
    return down, up


def write_peft_lora(
    path: Path, shapes: dict, seed: int, rank: int = 4, strength: float = 0.3, alpha: float | None = None
) -> Path:
    """diffusers/PEFT keys (`transformer.<module>.lora_A.weight`); with `alpha`, diffusers' adapter metadata
    (lora_alpha, r) in the header, as diffusers' save_lora_weights writes it."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith(PEFT_TARGETS):
            down, up = _pair(generator, rank, shape, strength)
            tensors[f"transformer.{name}.lora_A.weight"] = down
            tensors[f"transformer.{name}.lora_B.weight"] = up
    metadata = {"format": "pt"}
    if alpha is not None:
        config = {
            "r": rank,
            "lora_alpha": alpha,
            "target_modules": sorted({k.split(".lora_")[0] for k in tensors}),
        }
        metadata["lora_adapter_metadata"] = json.dumps({f"transformer.{k}": v for k, v in config.items()})
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_bfl_lora(path: Path, shapes: dict, seed: int, rank: int = 4, strength: float = 0.3) -> Path:
    """BFL/ComfyUI (ai-toolkit) names: `diffusion_model.double_blocks.N.img_attn.qkv.lora_A.weight`, ..."""
    generator = torch.Generator().manual_seed(seed)
    doubles = sorted({int(n.split(".")[1]) for n in shapes if n.startswith("transformer_blocks.")})
    singles = sorted({int(n.split(".")[1]) for n in shapes if n.startswith("single_transformer_blocks.")})
    targets = {}
    for i in doubles:
        fan_in, fan_out = shapes[f"transformer_blocks.{i}.attn.to_q"]
        targets[f"double_blocks.{i}.img_attn.qkv"] = (fan_in, 3 * fan_out)
        targets[f"double_blocks.{i}.txt_attn.proj"] = shapes[f"transformer_blocks.{i}.attn.to_add_out"]
        targets[f"double_blocks.{i}.img_mlp.0"] = shapes[f"transformer_blocks.{i}.ff.linear_in"]
    for i in singles:
        targets[f"single_blocks.{i}.linear1"] = shapes[f"single_transformer_blocks.{i}.attn.to_qkv_mlp_proj"]
        targets[f"single_blocks.{i}.linear2"] = shapes[f"single_transformer_blocks.{i}.attn.to_out"]
    targets["img_in"] = shapes["x_embedder"]
    targets["final_layer.adaLN_modulation.1"] = shapes["norm_out.linear"]
    tensors = {}
    for name, shape in targets.items():
        down, up = _pair(generator, rank, shape, strength)
        tensors[f"diffusion_model.{name}.lora_A.weight"] = down
        tensors[f"diffusion_model.{name}.lora_B.weight"] = up
    save_file(tensors, str(path))
    return path


def write_kohya_lora(
    path: Path, shapes: dict, seed: int, rank: int = 4, alpha: float = 2.0, strength: float = 0.3
) -> Path:
    """kohya names (`lora_unet_double_blocks_0_img_attn_proj.lora_down.weight`, `.lora_up`, `.alpha`)."""
    generator = torch.Generator().manual_seed(seed)
    doubles = sorted({int(n.split(".")[1]) for n in shapes if n.startswith("transformer_blocks.")})
    singles = sorted({int(n.split(".")[1]) for n in shapes if n.startswith("single_transformer_blocks.")})
    targets = {}
    for i in doubles:
        targets[f"double_blocks_{i}_img_attn_proj"] = shapes[f"transformer_blocks.{i}.attn.to_out.0"]
        targets[f"double_blocks_{i}_txt_mlp_2"] = shapes[f"transformer_blocks.{i}.ff_context.linear_out"]
    for i in singles:
        targets[f"single_blocks_{i}_linear1"] = shapes[f"single_transformer_blocks.{i}.attn.to_qkv_mlp_proj"]
    targets["time_in_in_layer"] = shapes["time_guidance_embed.timestep_embedder.linear_1"]
    tensors = {}
    for name, shape in targets.items():
        down, up = _pair(generator, rank, shape, strength)
        tensors[f"lora_unet_{name}.lora_down.weight"] = down
        tensors[f"lora_unet_{name}.lora_up.weight"] = up
        tensors[f"lora_unet_{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return path


def write_misfit_lora(path: Path, shapes: dict, factor: int = 2) -> Path:
    """diffusers keys of this model's modules, `factor` x wider: what a 9B LoRA is to a 4B model."""
    tensors = {}
    for name, (fan_in, fan_out) in list(shapes.items())[:4]:
        tensors[f"transformer.{name}.lora_A.weight"] = torch.zeros(2, fan_in * factor)
        tensors[f"transformer.{name}.lora_B.weight"] = torch.zeros(fan_out * factor, 2)
    save_file(tensors, str(path))
    return path
