"""Per-request LoRA, unfused and per sample: no weight is ever changed, so each image of a batch gets its
own set of adapters (or none) and the other requests are unaffected.

Every linear of the transformer is wrapped once in a `LoraLinear`. During a batch, `LoraSlots.apply`
hands each targeted wrapper two stacked tensors: down (B, R, in) and up (B, out, R); row i holds the
concatenated adapters of image i (each up already times its adapter's scale x the request's scale), and
zeros pad the shorter sets to the batch's largest total rank R. The wrapper returns
base(x) + (x @ down^T) @ up^T per sample: diffusers' sum over active adapters of scale * lora_B(lora_A(x)).
When no image of a batch has a LoRA, every wrapper gets None and runs as before. When one has, every wrapper
gets tensors (zeros where no image targets it) of rank at least MIN_RANK, the rank dimension marked dynamic.
Compiled (`always`), every batch is given tensors, zeros when it has no LoRA (x @ 0 adds exactly nothing):
one graph then serves every LoRA set and none, whatever modules and ranks, and the warm-up's graphs are all
there is to compile (tests/engine/test_lora_compile.py counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from kleinserve.engine.lora_file import LoraWeights

MIN_RANK = 2  # torch.compile specialises sizes 0 and 1: a rank of at least 2 keeps the rank dimension dynamic


@dataclass(frozen=True)
class ScaledLora:
    weights: LoraWeights  # already fitted to the model (module names and shapes checked, in its dtype)
    scale: float


class LoraLinear(nn.Module):
    """A linear (nn.Linear or fp8) plus the batch's per-sample low-rank update, when it has one."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_down: torch.Tensor | None = None  # (B, R, in)
        self.lora_up: torch.Tensor | None = None  # (B, out, R)
        # the model's state dict keeps the names it had unwrapped (to_q.weight, not to_q.base.weight)
        self._register_state_dict_hook(_unwrapped_names)
        self._register_load_state_dict_pre_hook(_wrapped_names)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.lora_down is None:
            return out
        return out + _low_rank(x, self.lora_down, self.lora_up)


def _unwrapped_names(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    inner = prefix + "base."
    for key in [key for key in state_dict if key.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _wrapped_names(state_dict: dict, prefix: str, *args) -> None:
    for key in [key for key in state_dict if key.startswith(prefix) and "." not in key[len(prefix) :]]:
        state_dict[prefix + "base." + key[len(prefix) :]] = state_dict.pop(key)


def _low_rank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(B or 1, ..., in) -> (B, ..., out): a batch-1 input (the shared timestep's modulation) is broadcast."""
    batch = down.shape[0]
    rows = x.reshape(x.shape[0], -1, x.shape[-1])
    if rows.shape[0] != batch:
        rows = rows.expand(batch, -1, -1)
    delta = torch.bmm(torch.bmm(rows, down.transpose(1, 2)), up.transpose(1, 2))
    return delta.reshape(batch, *x.shape[1:-1], up.shape[1])


def wrap_linears(model: nn.Module) -> dict[str, LoraLinear]:
    """Wrap every linear of `model` in place (once); the wrappers by the base linear's module name."""
    existing = {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    if existing:
        return existing
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name and hasattr(module, "in_features") and hasattr(module, "out_features") and _is_linear(module)
    ]
    wrappers = {}
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrappers[name] = LoraLinear(linear)
        setattr(parent, child, wrappers[name])
    return wrappers


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Fp8Linear"


class LoraSlots:
    """The transformer's wrapped linears and the per-batch adapter tensors they are given."""

    def __init__(self, model: nn.Module):
        self.wrappers = wrap_linears(model)
        self.always = False  # give every batch tensors (set for compiled models: one graph for all sets)
        first = next(model.parameters())
        self._like = first.new_zeros(0)  # the model's dtype and device

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """What a LoRA may target: each linear's name -> (in, out) features."""
        return {name: (w.in_features, w.out_features) for name, w in self.wrappers.items()}

    @contextmanager
    def apply(self, per_image: Sequence[Sequence[ScaledLora]]):
        """While open, image i of the batch runs with the adapters per_image[i] (empty: none)."""
        if not any(per_image) and not self.always:
            yield
            return
        stacked = stacked_adapters(per_image)
        like = self._like
        try:
            for name, wrapper in self.wrappers.items():
                down, up = stacked.get(name) or _zeros(like, len(per_image), wrapper)
                torch._dynamo.maybe_mark_dynamic(down, 1)
                torch._dynamo.maybe_mark_dynamic(up, 2)
                wrapper.lora_down, wrapper.lora_up = down, up
            yield
        finally:
            for wrapper in self.wrappers.values():
                wrapper.lora_down = wrapper.lora_up = None


def stacked_adapters(
    per_image: Sequence[Sequence[ScaledLora]],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (down (B, R, in), up (B, out, R)) for every module some image's adapters target."""
    names = sorted({name for loras in per_image for lora in loras for name in lora.weights.modules})
    stacked = {}
    for name in names:
        downs, ups = [], []
        for loras in per_image:
            parts = [
                (lora.weights.modules[name], lora.scale) for lora in loras if name in lora.weights.modules
            ]
            downs.append([m.down for m, _ in parts])
            ups.append([m.up * (m.scale * scale) for m, scale in parts])
        stacked[name] = _pad_and_stack(downs, ups)
    return stacked


def _zeros(like: torch.Tensor, batch: int, wrapper: LoraLinear) -> tuple[torch.Tensor, torch.Tensor]:
    down = like.new_zeros(batch, MIN_RANK, wrapper.in_features)
    return down, like.new_zeros(batch, wrapper.out_features, MIN_RANK)


def _pad_and_stack(downs: list[list[torch.Tensor]], ups: list[list[torch.Tensor]]):
    template = next(d for image in downs for d in image)
    up_template = next(u for image in ups for u in image)
    ranks = [sum(d.shape[0] for d in image) for image in downs]
    rank = max(*ranks, MIN_RANK)
    down = template.new_zeros(len(downs), rank, template.shape[1])
    up = up_template.new_zeros(len(ups), up_template.shape[0], rank)
    for i, (image_downs, image_ups) in enumerate(zip(downs, ups, strict=True)):
        if image_downs:
            down[i, : ranks[i]] = torch.cat(image_downs, dim=0)
            up[i, :, : ranks[i]] = torch.cat(image_ups, dim=1)
    return down, up
