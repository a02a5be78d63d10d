"""With --compile, switching LoRA sets never recompiles: after the usual warm-up (no LoRA), batches with any
LoRA sets (other modules, other ranks, mixed with none) reuse the compiled code."""

import torch
from torch._dynamo.utils import counters

from kleinserve.engine import Engine
from kleinserve.engine.config import EngineConfig
from kleinserve.engine.optimize import Optimizations
from kleinserve.engine.warmup import warm_up
from kleinserve.models import Variant, resolve_model
from kleinserve.request import build_request

from support.lora_files import linear_shapes, write_bfl_lora, write_kohya_lora, write_peft_lora


def test_switching_lora_sets_does_not_recompile(checkpoints, tmp_path):
    shapes = linear_shapes(checkpoints[Variant.DISTILLED])
    a = write_peft_lora(tmp_path / "a.safetensors", shapes, seed=1)
    b = write_bfl_lora(tmp_path / "b.safetensors", shapes, seed=2)  # other modules
    c = write_kohya_lora(tmp_path / "c.safetensors", shapes, seed=3)
    wide = write_peft_lora(tmp_path / "wide.safetensors", shapes, seed=4, rank=16)  # another rank
    torch._dynamo.reset()
    config = EngineConfig(
        device="cpu", max_batch_images=4, optimizations=Optimizations(compile=True), warmup_sizes=((64, 64),)
    )
    engine = Engine.load(resolve_model(str(checkpoints[Variant.DISTILLED])), config)
    warm_up(engine, config)
    warmed = counters["stats"]["unique_graphs"]
    batches = [[[a]], [[b]], [[a, b]], [[c], []], [[wide]], [[a], [b], [a, c], []], [[a, b, c]], [[]]]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for sets in batches:
            engine.generate([request(engine, files) for files in sets])
    assert counters["stats"]["unique_graphs"] == warmed


def request(engine, files):
    loras = [{"path": str(path)} for path in files]
    return build_request(engine.spec, prompt="x", width=64, height=64, seed=1, loras=loras)
