"""fp8 linears: weights held as float8_e4m3fn with one float32 scale per output channel (amax / 448).

Where the hardware has fp8 matrix units (CUDA, compute capability 8.9 or more: Ada, Hopper, Blackwell) and the
model runs in bfloat16, each call quantizes its activations per row (amax / 448) and multiplies in fp8 with
torch._scaled_mm (rowwise scales, bfloat16 out). Elsewhere (CPU, older GPUs, float16/float32 models, shapes
_scaled_mm refuses) the weight is dequantized and F.linear runs in the model's dtype: weight-only fp8, the
same stored weights, so CPU tests check the quantization itself.

Which linears: quantize_blocks() converts those inside a model's repeated blocks (the FLUX.2 transformer's
double and single blocks, the Qwen3 text encoder's decoder layers), where nearly all the FLOPs are. Embedders,
the shared modulation, the final norm/projection and the LM head keep their dtype: they are small, and they
act on every token (or the timestep) directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448.0
FORMATS = ("fp8",)
REPEATED_BLOCKS = {  # per component, the module lists whose nn.Linears the fp8 levers convert
    "transformer": ("transformer_blocks", "single_transformer_blocks"),  # FLUX.2's double and single blocks
    "text encoder": ("layers",),  # the Qwen3 decoder layers
}
MIN_SCALE = 1e-12  # an all-zero row or channel keeps a finite scale


class Fp8Linear(nn.Module):
    """nn.Linear with fp8 weights. `weight` (out, in) float8_e4m3fn and `scale` (out, 1) float32 are buffers,
    so a model's dtype (its first floating-point parameter) stays the dtype it computes in; so is the bias,
    which keeps that dtype."""

    def __init__(
        self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, fp8_matmul: bool
    ):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.fp8_matmul = fp8_matmul  # fp8 x fp8 with _scaled_mm for bfloat16 inputs, else weight-only

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        weight, scale = quantize_rows(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        fp8_matmul = (
            has_fp8_matmul(weight.device) and linear.in_features % 16 == 0 and linear.out_features % 16 == 0
        )
        return cls(weight, scale, bias, fp8_matmul)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_matmul and x.dtype == torch.bfloat16:
            return self._fp8_matmul(x)
        return F.linear(x, self.dequantized(x.dtype), self.bias)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight.to(torch.float32) * self.scale).to(dtype)

    def _fp8_matmul(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        quantized, row_scale = quantize_rows(rows)
        out = torch._scaled_mm(
            quantized,
            self.weight.t(),  # (in, out), column-major as _scaled_mm wants
            scale_a=row_scale,  # (rows, 1)
            scale_b=self.scale.view(1, -1),  # (1, out)
            bias=self.bias,
            out_dtype=torch.bfloat16,
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        path = "fp8 matmul" if self.fp8_matmul else "weight-only"
        return f"in_features={self.in_features}, out_features={self.out_features}, {path}"


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) -> float8_e4m3fn values and the float32 (rows, 1) scales that multiply them back."""
    wide = matrix.to(torch.float32)
    scale = (wide.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    return (wide / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def has_fp8_matmul(device: torch.device) -> bool:
    """NVIDIA GPUs of compute capability 8.9+ (ROCm's fp8 GPUs mostly take float8_e4m3fnuz: weight-only)."""
    return (
        device.type == "cuda"
        and torch.version.hip is None
        and torch.cuda.get_device_capability(device) >= (8, 9)
    )


def quantize_blocks(blocks: nn.Module) -> int:
    """Replace every nn.Linear under `blocks` with an Fp8Linear in place; returns how many."""
    targets = [(name, module) for name, module in blocks.named_modules() if type(module) is nn.Linear]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = blocks.get_submodule(parent_name) if parent_name else blocks
        setattr(parent, child, Fp8Linear.from_linear(linear))
    return len(targets)


def quantize_component(component: str, model: nn.Module) -> int:
    """Converts the linears of `model`'s REPEATED_BLOCKS[component]; returns how many."""
    return sum(quantize_blocks(getattr(model, blocks)) for blocks in REPEATED_BLOCKS[component])


def fp8_linears(model: nn.Module) -> list[Fp8Linear]:
    return [module for module in model.modules() if isinstance(module, Fp8Linear)]
