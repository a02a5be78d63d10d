"""Warm-up pays every compile before serving."""

import torch
from torch._dynamo.utils import counters

from kleinserve.engine import Engine
from kleinserve.engine.config import EngineConfig
from kleinserve.engine.optimize import Optimizations
from kleinserve.engine.warmup import warm_up
from kleinserve.models import Variant, resolve_model
from kleinserve.request import build_request


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_after_warm_up_a_compiled_engine_forms_any_batch_without_compiling(checkpoints):
    torch._dynamo.reset()  # compiled code is shared by all engines in the process: start with none
    sizes = ((64, 64), (96, 64))
    config = EngineConfig(
        device="cpu",
        max_batch_images=4,
        optimizations=Optimizations(compile=True, compile_decoder=True),  # as on CUDA
        warmup_sizes=sizes,
    )
    engine = Engine.load(resolve_model(str(checkpoints[Variant.DISTILLED])), config)
    before = compiled_graphs()
    warm_up(engine, config)
    warmed = compiled_graphs()
    assert warmed > before  # the counter is real: warm-up compiled
    # Batches of 1..4 images, some joined from several requests; a recompile would raise, not just count.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for width, height in sizes:
            for counts in ((2,), (1, 1), (3,), (2, 2), (4,), (1,)):
                engine.generate([request(engine, width, height, n) for n in counts])
    assert compiled_graphs() == warmed


def request(engine: Engine, width: int, height: int, images: int):
    return build_request(engine.spec, prompt="later", width=width, height=height, seed=5, num_images=images)
