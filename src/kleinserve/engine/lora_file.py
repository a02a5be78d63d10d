"""LoRA files: a safetensors file -> per-module (A, B, alpha/rank) in diffusers' module names, checked against
the transformer it is meant for.

Key names are converted by diffusers' own Flux2LoraLoaderMixin.lora_state_dict (diffusers/PEFT keys,
`base_model.model.` PEFT exports, BFL/ai-toolkit/ComfyUI `diffusion_model.*` keys, kohya `lora_unet_*` with
`.alpha`), given the tensors as a dict: only safetensors are read, nothing is ever unpickled. Scaling follows
diffusers: a kohya `.alpha` is folded into the weights by its converter; a `lora_adapter_metadata` entry in
the file's header (what diffusers writes) gives lora_alpha / r (or / sqrt(r) with use_rslora); otherwise
alpha equals each module's rank (scale 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from kleinserve.errors import InvalidCheckpoint, InvalidLora

METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
PREFIX = "transformer."
UNSUPPORTED = {
    "lokr_": "a LoKr adapter (only LoRA is supported)",
    "lora_magnitude_vector": "a DoRA adapter (only plain LoRA is supported)",
    "lora_B.bias": "a LoRA with lora_B biases (not supported)",
}


@dataclass(frozen=True)
class LoraModule:
    """One targeted linear: out += scale * (x @ down.T) @ up.T."""

    down: torch.Tensor  # (rank, in) = lora_A
    up: torch.Tensor  # (out, rank) = lora_B
    scale: float  # alpha / rank


@dataclass(frozen=True)
class LoraWeights:
    modules: dict[str, LoraModule]  # diffusers module name in the transformer -> its LoRA

    def __contains__(self, name: str) -> bool:
        return name in self.modules

    @property
    def nbytes(self) -> int:
        return sum(m.down.nbytes + m.up.nbytes for m in self.modules.values())


def read_lora_file(path: Path) -> LoraWeights:
    """Parse `path` (safetensors only) into diffusers module names; InvalidLora says what is wrong."""
    from safetensors.torch import load_file

    header = _safetensors_header(path)
    if not any(key != "__metadata__" for key in header):
        raise InvalidLora(f"{path.name} holds no tensors")
    tensors = load_file(str(path), device="cpu")
    converted = _diffusers_keys(path, tensors)
    return LoraWeights(_modules(path, converted, _adapter_config(header)))


def fit_to_model(weights: LoraWeights, shapes: dict[str, tuple[int, int]], name: str, like) -> LoraWeights:
    """The same LoRA in the dtype and on the device of tensor `like`, after checking each module is one of
    the model's linears (`shapes`: name -> (in, out)) with the same shape."""
    unknown = sorted(n for n in weights.modules if n not in shapes)
    wrong = [
        f"{n}: LoRA {m.down.shape[1]}->{m.up.shape[0]}, model {shapes[n][0]}->{shapes[n][1]}"
        for n, m in sorted(weights.modules.items())
        if n in shapes and (m.down.shape[1], m.up.shape[0]) != shapes[n]
    ]
    if unknown or wrong:
        problems = []
        if unknown:
            problems.append(f"{len(unknown)} modules the model lacks (first: {', '.join(unknown[:3])})")
        if wrong:
            problems.append(f"{len(wrong)} of another shape (first: {'; '.join(wrong[:2])})")
        raise InvalidLora(
            f"{name} does not fit this model: {' and '.join(problems)}; is it a LoRA for another"
            " FLUX.2 [klein] size or another architecture?"
        )
    return LoraWeights(
        {n: LoraModule(m.down.to(like), m.up.to(like), m.scale) for n, m in weights.modules.items()}
    )


def _safetensors_header(path: Path) -> dict:
    try:
        from kleinserve.engine.single_file import check_safetensors_header

        return check_safetensors_header(path)
    except InvalidCheckpoint as exc:
        message = str(exc).replace(str(path), path.name).replace("transformer weights", "LoRAs")
        raise InvalidLora(message) from None


def _diffusers_keys(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.lora_pipeline import Flux2LoraLoaderMixin

    for marker, what in UNSUPPORTED.items():
        if any(marker in key for key in tensors):
            raise InvalidLora(f"{path.name} is {what}")
    try:
        converted = Flux2LoraLoaderMixin.lora_state_dict(dict(tensors))
    except (ValueError, KeyError, IndexError, RuntimeError, AssertionError) as exc:
        raise InvalidLora(f"{path.name} is not a FLUX.2 LoRA diffusers can read: {_short(exc)}") from None
    if not any(".lora_A." in key or ".lora_B." in key for key in converted):
        raise InvalidLora(f"{path.name} holds no LoRA tensors (no lora_A/lora_B, lora_down/lora_up keys)")
    return converted


def _adapter_config(header: dict) -> dict:
    """diffusers' adapter metadata (LoraConfig fields), without its `transformer.` prefix; {} if none."""
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        raise InvalidLora(f"its {METADATA_KEY} header entry is not JSON") from None
    if any(key.startswith(PREFIX) for key in config):
        config = {key.removeprefix(PREFIX): value for key, value in config.items() if key.startswith(PREFIX)}
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise InvalidLora("per-module rank_pattern/alpha_pattern metadata is not supported")
    return config


def _modules(path: Path, state: dict[str, torch.Tensor], config: dict) -> dict[str, LoraModule]:
    names = sorted({key.split(".lora_")[0] for key in state if ".lora_" in key})
    modules = {}
    for name in names:
        down, up = state.get(f"{name}.lora_A.weight"), state.get(f"{name}.lora_B.weight")
        if down is None or up is None:
            raise InvalidLora(f"{path.name}: {name} has only one of lora_A/lora_B")
        if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
            raise InvalidLora(
                f"{path.name}: {name} has lora_A {tuple(down.shape)} and lora_B {tuple(up.shape)},"
                " not (r, in) and (out, r)"
            )
        if not name.startswith(PREFIX):
            continue  # diffusers' Flux2 loader applies only the transformer's LoRA
        modules[name.removeprefix(PREFIX)] = LoraModule(
            down.float(), up.float(), _scale(config, down.shape[0])
        )
    if not modules:
        raise InvalidLora(f"{path.name} holds no LoRA for the transformer")
    return modules


def _scale(config: dict, rank: int) -> float:
    if not config:
        return 1.0
    r = int(config.get("r", rank))
    alpha = float(config.get("lora_alpha", r))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
