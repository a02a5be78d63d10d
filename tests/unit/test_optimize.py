"""Speed levers without a model: their defaults per device, refused backends, and what compiling warms."""

import argparse

import pytest
import torch

from kleinserve.cli.setting_flags import settings_from_args
from kleinserve.engine.fp8 import FORMATS
from kleinserve.engine.optimize import Optimizations, check_attention_backend, check_quantize
from kleinserve.engine.warmup import warmup_plan
from kleinserve.errors import InvalidRequest
from kleinserve.service.engine_startup import engine_config
from kleinserve.settings import QUANTIZATIONS, Settings


def test_levers_default_by_device_and_unknown_backends_are_refused():
    assert not Optimizations.for_device(torch.device("cpu")).compile
    assert Optimizations.for_device(torch.device("cuda")).compile
    assert not Optimizations.for_device(torch.device("cuda"), compile=False).compile
    # The VAE decoder is compiled with the blocks on CUDA only (on CPU its compile costs more than it saves).
    assert Optimizations.for_device(torch.device("cuda")).compile_decoder
    assert not Optimizations.for_device(torch.device("cuda"), compile=False).compile_decoder
    assert not Optimizations.for_device(torch.device("cpu"), compile=True).compile_decoder
    assert "compile=on +decoder" in Optimizations.for_device(torch.device("cuda")).describe()
    with pytest.raises(InvalidRequest, match="--attention-backend"):
        check_attention_backend("fastest-please")


def test_quantization_is_off_by_default_and_unknown_formats_name_their_flag(tmp_path, monkeypatch):
    assert Optimizations.for_device(torch.device("cuda")).quantize is None
    assert "quantize=off, quantize_text_encoder=off" in Optimizations().describe()
    assert QUANTIZATIONS == FORMATS  # the settings' choices are the engine's formats
    for flag in ("--quantize", "--quantize-text-encoder"):
        with pytest.raises(InvalidRequest, match=rf"^{flag}: unknown quantization 'int4'; known: fp8"):
            check_quantize("int4", flag)
    # a bad value from the environment (the flag parser checks its own choices)
    monkeypatch.setenv("KLEINSERVE_QUANTIZE_TEXT_ENCODER", "int4")
    with pytest.raises(InvalidRequest, match=r"^--quantize-text-encoder: String should match pattern"):
        settings_from_args(argparse.Namespace())
    monkeypatch.delenv("KLEINSERVE_QUANTIZE_TEXT_ENCODER")
    settings = Settings(
        data_dir=tmp_path, device="cpu", safety_checker=False, quantize="fp8", quantize_text_encoder="fp8"
    )
    options = engine_config(settings).optimizations
    assert (options.quantize, options.quantize_text_encoder) == ("fp8", "fp8")


def test_compiling_warms_the_common_sizes_and_a_batch(tmp_path):
    def plan(**fields):
        settings = Settings(data_dir=tmp_path, device="cpu", safety_checker=False, **fields)
        return warmup_plan(engine_config(settings))

    assert plan() == [(256, 256, 1)]
    compiled = plan(compile=True)
    assert (1024, 1024, 1) in compiled and compiled[-1] == (512, 512, 2)  # batches of 2+ after every size
    assert plan(warmup_sizes=("512x384",)) == [(512, 384, 1)]
    assert plan(compile=True, max_batch_images=1) == [(w, h, 1) for w, h, _ in compiled[:-1]]
