"""The plan's numbers for a checkpoint on disk are the bytes of the parameters the engine actually loads."""

import pytest
import torch

from kleinserve.engine import Engine
from kleinserve.engine.memory_plan import plan_model
from kleinserve.models import Variant, resolve_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_tiny_checkpoints_plan_equals_its_loaded_parameter_bytes(checkpoints, dtype):
    spec = resolve_model(str(checkpoints[Variant.DISTILLED]))
    engine = Engine.load(spec, device="cpu", dtype=dtype, warmup=False)
    loaded = {"text encoder": engine.components.text_encoder, "transformer": engine.components.transformer,
              "VAE": engine.components.vae}  # fmt: skip
    plan = plan_model(spec, dtype=dtype)
    for component in plan.components:
        parameters = list(loaded[component.name].parameters())
        assert component.params == sum(p.numel() for p in parameters)
        assert component.bytes == sum(p.numel() * p.element_size() for p in parameters)
    assert "configs read from" in plan.components[0].source
