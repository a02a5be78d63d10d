"""fp8 linears without a model: close to F.linear within fp8's error on both paths (weight-only, and per-row
fp8 activations through torch._scaled_mm, which runs on CPU too), and the fp8 matmul only where it can run."""

import pytest
import torch

from kleinserve.engine import fp8
from kleinserve.engine.fp8 import FP8, FP8_MAX, Fp8Linear, quantize_rows


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.float() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize(
    "dtype, fp8_matmul",
    [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)],
    ids=["weight-only-fp32", "weight-only-bf16", "scaled-mm-bf16"],
)
def test_an_fp8_linear_matches_f_linear_within_fp8_error(dtype, fp8_matmul):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(2, 8, 64)
    x[0, 0] = 0  # an all-zero row keeps a finite scale
    expected = linear(x).detach()
    quantized = Fp8Linear.from_linear(linear.to(dtype))
    quantized.fp8_matmul = fp8_matmul  # what CUDA with fp8 units gets
    out = quantized(x.to(dtype))
    assert (
        quantized.weight.dtype == FP8 and quantized.scale.shape == (48, 1) and quantized.bias.dtype == dtype
    )
    assert out.dtype == dtype and out.shape == expected.shape and torch.isfinite(out).all()
    # e4m3 keeps 3 mantissa bits (rounding error <= 1/16 per element); measured 0.025 weight-only, 0.035 both
    assert relative_error(out, expected) < 0.05


def test_fp8_values_round_to_within_one_sixteenth_of_each_weight():
    torch.manual_seed(0)
    weight = torch.randn(32, 64) * torch.logspace(-3, 2, 32).unsqueeze(1)  # channels of very different sizes
    values, scale = quantize_rows(weight)
    assert values.dtype == FP8 and scale.dtype == torch.float32
    assert torch.equal(
        values.float().abs().amax(dim=1), torch.full((32,), FP8_MAX)
    )  # each channel's range used
    error = (values.float() * scale - weight).abs()
    assert (error <= weight.abs() / 16 + scale * 2**-9).all()  # 2**-9: e4m3's smallest subnormal


def test_the_fp8_matmul_runs_only_for_bf16_inputs_and_shapes_it_takes(monkeypatch):
    assert not Fp8Linear.from_linear(torch.nn.Linear(64, 48)).fp8_matmul  # CPU: weight-only
    monkeypatch.setattr(fp8, "has_fp8_matmul", lambda device: True)
    assert Fp8Linear.from_linear(torch.nn.Linear(64, 48)).fp8_matmul
    assert not Fp8Linear.from_linear(torch.nn.Linear(60, 48)).fp8_matmul  # _scaled_mm wants multiples of 16
    assert not Fp8Linear.from_linear(torch.nn.Linear(64, 40)).fp8_matmul
    linear = torch.nn.Linear(64, 48)
    quantized = Fp8Linear.from_linear(linear)
    x = torch.randn(3, 64)
    calls = []
    monkeypatch.setattr(torch, "_scaled_mm", lambda *args, **kwargs: calls.append(args))
    quantized(x)  # float32: weight-only
    assert calls == []
    torch.testing.assert_close(
        quantized(x), torch.nn.functional.linear(x, quantized.dequantized(torch.float32), linear.bias)
    )
