"""Speed levers without a model: their defaults per device, refused backends, and what compiling warms."""

import pytest
import torch

from kleinserve.engine.optimize import Optimizations, check_attention_backend
from kleinserve.engine.warmup import warmup_plan
from kleinserve.errors import InvalidRequest
from kleinserve.service.engine_startup import engine_config
from kleinserve.settings import Settings


def test_levers_default_by_device_and_unknown_backends_are_refused():
    assert not Optimizations.for_device(torch.device("cpu")).compile
    assert Optimizations.for_device(torch.device("cuda")).compile
    assert not Optimizations.for_device(torch.device("cuda"), compile=False).compile
    with pytest.raises(InvalidRequest, match="--attention-backend"):
        check_attention_backend("fastest-please")


def test_compiling_warms_the_common_sizes_and_a_batch(tmp_path):
    def plan(**fields):
        settings = Settings(data_dir=tmp_path, device="cpu", safety_checker=False, **fields)
        return warmup_plan(engine_config(settings))

    assert plan() == [(256, 256, 1)]
    compiled = plan(compile=True)
    assert (1024, 1024, 1) in compiled and compiled[-1] == (512, 512, 2)  # batches of 2+ after every size
    assert plan(warmup_sizes=("512x384",)) == [(512, 384, 1)]
    assert plan(compile=True, max_batch_images=1) == [(w, h, 1) for w, h, _ in compiled[:-1]]
