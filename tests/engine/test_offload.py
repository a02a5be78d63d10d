"""--offload text-encoder: the text encoder lives in CPU memory and is moved to the engine's device only to
encode prompts the cache lacks, then back. On CPU both places are the CPU, so the moves are checked as calls
(to a distinct device object, cpu:0) and the images as unchanged."""

import numpy as np
import pytest
import torch

from kleinserve.engine import Engine
from kleinserve.engine.loading import load_components
from kleinserve.engine.text import PromptEncoder
from kleinserve.models import Variant, resolve_model
from kleinserve.request import build_request
from kleinserve.service.engine_startup import engine_config
from kleinserve.settings import Settings


def test_an_offloaded_encoder_visits_its_device_to_encode_and_goes_home(engine, monkeypatch):
    text_encoder = engine.components.text_encoder
    moves, moves_when_it_ran = [], []
    original_to = text_encoder.to

    def recording_to(device):
        moves.append(torch.device(device))
        return original_to(device)

    monkeypatch.setattr(text_encoder, "to", recording_to)
    hook = text_encoder.register_forward_pre_hook(lambda *_: moves_when_it_ran.append(list(moves)))
    visitor = torch.device("cpu", 0)  # not equal to torch.device("cpu"): a real visit, on the CPU
    try:
        offloaded = PromptEncoder(engine.components.tokenizer, text_encoder, cache_size=4, run_on=visitor)
        embeds = offloaded.encode(["a red fox", "a blue bird"])
        assert moves_when_it_ran == [[visitor]]  # it ran once, on the visit
        assert moves == [visitor, torch.device("cpu")]  # then went home
        offloaded.encode(["a blue bird", "a red fox"])  # cache hits: no visit
        assert len(moves) == 2 and len(moves_when_it_ran) == 1
    finally:
        hook.remove()
    resident = PromptEncoder(engine.components.tokenizer, text_encoder)
    assert torch.equal(embeds, resident.encode(["a red fox", "a blue bird"]))


def test_loading_puts_an_offloaded_text_encoder_apart(checkpoints):
    """Its own device (meta here, to tell it apart on a CPU-only machine); the rest on the engine's."""
    components = load_components(checkpoints[Variant.DISTILLED], Variant.DISTILLED, torch.device("cpu"),
                                 torch.float32, text_encoder_device=torch.device("meta"))  # fmt: skip
    assert next(components.text_encoder.parameters()).device.type == "meta"
    assert next(components.transformer.parameters()).device.type == "cpu"


def test_an_engine_with_the_text_encoder_offloaded_makes_the_same_images(checkpoints, engine, spec):
    offloaded = Engine.load(resolve_model(str(checkpoints[Variant.DISTILLED])), device="cpu",
                            offload_text_encoder=True, prompt_cache_size=4)  # fmt: skip
    assert offloaded.prompts.run_on == offloaded.device
    assert next(offloaded.components.text_encoder.parameters()).device == torch.device("cpu")
    request = build_request(spec, prompt="a lighthouse", width=64, height=64, seed=3)
    expected = engine.generate([request])[0].images[0]
    for _ in range(2):  # a miss, then a hit
        assert np.array_equal(offloaded.generate([request])[0].images[0], expected)


def test_serve_offload_flag_reaches_the_engine_config():
    assert engine_config(Settings(offload="text-encoder")).offload_text_encoder
    assert not engine_config(Settings()).offload_text_encoder
    with pytest.raises(ValueError, match="text-encoder"):
        Settings(offload="vae")
