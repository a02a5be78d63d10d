"""BFL's single-file transformer checkpoints: `flux-2-klein-4b.safetensors` beside the diffusers tree in
the official repos, and the fp8 repos' `flux-2-klein-4b-fp8.safetensors`
(black-forest-labs/FLUX.2-klein-4b-fp8).

What the files hold (README "Weights: single files" says where each fact comes from):
- BFL's own module names (`img_in`, `double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`,
  `final_layer.adaLN_modulation.1`, RMSNorm weights as `.scale`), no biases, bf16. ComfyUI's bundles put
  `model.diffusion_model.` in front of every key; that prefix is dropped.
- fp8: the same keys; each linear of the double and single blocks has its weight in float8_e4m3fn, a float32
  `.weight_scale` (one per tensor, or one per output row) and a float32 `.input_scale` (the activation scale
  an fp8-compute kernel would use). ComfyUI's older spellings `.scale_weight` / `.scale_input`, its
  `scaled_fp8` marker and `.comfy_quant` layer markers are read the same way.

fp8 weights are dequantized here (float32 weight x scale, then the model dtype), so the model computes in
its dtype as with the bf16 file; `.input_scale` is not needed for that and is dropped. The keys are then
renamed by diffusers' own `convert_flux2_transformer_checkpoint_to_diffusers` and loaded into a
Flux2Transformer2DModel built from the diffusers tree's transformer/config.json. Only safetensors are
read: nothing is unpickled.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from kleinserve.errors import InvalidCheckpoint

COMFY_PREFIX = "model.diffusion_model."
FLUX2_MARKER = "single_stream_modulation.lin.weight"  # diffusers' own test for a FLUX.2 checkpoint
DIFFUSERS_MARKER = "single_stream_modulation.linear.weight"
WEIGHT_SCALES = (".weight_scale", ".scale_weight")
DROPPED_SUFFIXES = (".input_scale", ".scale_input", ".comfy_quant")
DROPPED_KEYS = ("scaled_fp8",)
FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)
FLOATS = (torch.float32, torch.bfloat16, torch.float16, *FLOAT8)
HEADER_FLOATS = {"F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"}  # safetensors' names for FLOATS


def check_single_file(path: Path) -> None:
    """Fail fast, from the header alone (no weights read): safetensors, FLUX.2 keys, bf16/fp8 weights."""
    header = check_safetensors_header(path)
    dtypes = {
        key.removeprefix(COMFY_PREFIX): entry.get("dtype")
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict)
    }
    if FLUX2_MARKER not in dtypes and DIFFUSERS_MARKER not in dtypes:
        raise InvalidCheckpoint(f"{path} is not a FLUX.2 transformer: {_what_it_looks_like(dtypes)}")
    for key, dtype in dtypes.items():
        if dtype not in HEADER_FLOATS and not key.endswith(DROPPED_SUFFIXES):
            raise InvalidCheckpoint(_not_float_message(path, key, dtype))


def load_single_file_transformer(path: Path, config_dir: Path, dtype: torch.dtype) -> torch.nn.Module:
    """A Flux2Transformer2DModel with the weights of BFL single file `path` (bf16 or fp8) in `dtype`,
    its architecture from `config_dir` (the diffusers tree's transformer/ folder)."""
    from accelerate import init_empty_weights
    from diffusers import Flux2Transformer2DModel

    config_file = config_dir / "config.json"
    if not config_file.is_file():
        raise InvalidCheckpoint(
            f"{config_file} is missing: a single-file transformer ({path.name}) holds weights only, its"
            " architecture comes from the diffusers tree's transformer/config.json"
        )
    state = diffusers_state_dict(path, dtype)
    with init_empty_weights():
        model = Flux2Transformer2DModel.from_config(Flux2Transformer2DModel.load_config(config_dir))
    check_matches(path, state, model.state_dict(), config_file)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def diffusers_state_dict(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The file's tensors dequantized into `dtype`, under diffusers' names."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    state = read_weights(path, dtype)
    if DIFFUSERS_MARKER in state:
        return state  # already diffusers' names (a diffusion_pytorch_model.safetensors given as the file)
    if FLUX2_MARKER not in state:
        raise InvalidCheckpoint(f"{path} is not a FLUX.2 transformer: {_what_it_looks_like(state)}")
    return convert_flux2_transformer_checkpoint_to_diffusers(state)


def read_weights(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The file's weights in `dtype`, ComfyUI's key prefix removed: float8 ones times their scale (per tensor
    or per output row), one tensor at a time, so a 9B fp8 file never sits in memory twice. Scales of
    weights that are not float8, and markers, are dropped; InvalidCheckpoint unless the file is safetensors
    holding float weights."""
    from safetensors import safe_open

    check_safetensors_header(path)
    state = {}
    try:
        with safe_open(str(path), framework="pt") as file:
            names = {key.removeprefix(COMFY_PREFIX): key for key in file.keys()}  # noqa: SIM118
            scales = {
                name.rsplit(".", 1)[0] + ".weight": file.get_tensor(key)
                for name, key in names.items()
                if name.endswith(WEIGHT_SCALES)
            }
            for name, key in names.items():
                if name in DROPPED_KEYS or name.endswith((*DROPPED_SUFFIXES, *WEIGHT_SCALES)):
                    continue
                tensor = file.get_tensor(key)
                if tensor.dtype not in FLOATS:
                    raise InvalidCheckpoint(_not_float_message(path, name, tensor.dtype))
                if tensor.dtype in FLOAT8 and name in scales:
                    tensor = _times_scale(path, name, tensor, scales[name])
                state[name] = tensor.to(dtype)
    except InvalidCheckpoint:
        raise
    except Exception as exc:  # safetensors' own errors: truncated data, an unknown dtype
        raise InvalidCheckpoint(f"{path} is not a readable safetensors file: {exc}") from exc
    return state  # a scale without its weight is ignored: one loader of the fp8 files reports such scales


def check_safetensors_header(path: Path) -> dict:
    """The file's JSON header, after checking the file is safetensors (8-byte length, then JSON)."""
    if not path.is_file():
        raise InvalidCheckpoint(f"{path} does not exist or is not a file")
    with path.open("rb") as file:
        start = file.read(8)
        size = struct.unpack("<Q", start)[0] if len(start) == 8 else 0
        header = file.read(size) if 2 <= size <= 100_000_000 else b""
    try:
        parsed = json.loads(header) if header.startswith(b"{") else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidCheckpoint(
            f"{path} is not a safetensors file ({_format_guess(start)}); kleinserve reads transformer weights"
            " only from .safetensors files and never unpickles .ckpt/.pt/.bin files"
        )
    return parsed


def _times_scale(path: Path, key: str, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if scale.numel() == 1:
        scale = scale.reshape(())
    elif scale.numel() == weight.shape[0]:  # one per output row
        scale = scale.reshape(-1, *[1] * (weight.dim() - 1))
    else:
        raise InvalidCheckpoint(
            f"{path}: the scale of {key} has shape {tuple(scale.shape)} for a weight of"
            f" {tuple(weight.shape)}; only per-tensor and per-row fp8 scales are supported (not block-wise"
            " ones such as mxfp8)"
        )
    return weight.to(torch.float32) * scale.to(torch.float32)


def check_matches(path: Path, state: dict, expected: dict, config_file: Path) -> None:
    """InvalidCheckpoint, saying which keys and shapes differ, unless `state` fits the model exactly."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shapes = [
        f"{key} {tuple(state[key].shape)} (the model has {tuple(expected[key].shape)})"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or wrong_shapes):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown weights (e.g. {', '.join(unexpected[:3])})")
    if wrong_shapes:
        problems.append(f"{len(wrong_shapes)} of another shape (e.g. {', '.join(wrong_shapes[:2])})")
    raise InvalidCheckpoint(
        f"{path} does not fit the architecture in {config_file}: {'; '.join(problems)}."
        " Is it a checkpoint of another model size?"
    )


def _not_float_message(path: Path, key: str, dtype) -> str:
    return (
        f"{path} holds {dtype} weights ({key}): an int8 or 4-bit quantized file, which kleinserve does not"
        " load; use the bf16 file or the fp8 one"
    )


def _what_it_looks_like(state: dict) -> str:
    keys = sorted(state)
    if any(".img_mod.lin." in key for key in keys):
        return "its keys are FLUX.1's (double_blocks.N.img_mod), not FLUX.2's"
    return f"it has no {FLUX2_MARKER} (its first keys: {', '.join(keys[:3]) or 'none'})"


def _format_guess(start: bytes) -> str:
    if start.startswith(b"PK\x03\x04"):
        return "it is a zip archive, as PyTorch's pickled .pt/.ckpt files are"
    if start[:1] == b"\x80":
        return "it starts like a Python pickle"
    if start.startswith(b"GGUF"):
        return "it is a GGUF file"
    return "its header is not safetensors' 8-byte length and JSON"
