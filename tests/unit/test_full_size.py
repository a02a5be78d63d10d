"""The benchmark's full-size models have the published parameter counts (counted on the meta device,
nothing allocated)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import full_size


@pytest.mark.parametrize(
    ("size", "text_billions", "transformer_billions"), [("4b", 4.02, 3.88), ("9b", 8.19, 9.08)]
)
def test_full_size_models_have_the_published_parameter_counts(size, text_billions, transformer_billions):
    text_encoder, transformer, vae = full_size.build_modules(size, "meta", torch.bfloat16)
    assert full_size.parameter_count(text_encoder) / 1e9 == pytest.approx(text_billions, abs=0.01)
    assert full_size.parameter_count(transformer) / 1e9 == pytest.approx(transformer_billions, abs=0.01)
    assert full_size.parameter_count(vae) / 1e6 == pytest.approx(84.0, abs=0.1)
    assert next(transformer.parameters()).dtype is torch.bfloat16
