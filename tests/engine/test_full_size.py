"""The engine's 27-layer text encoder holds the full model's weights, and the benchmark's full-size build
gives an engine and a stock pipeline that agree (on the tiny model)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import full_size


def test_the_truncated_text_encoder_gives_the_full_models_hidden_states(checkpoints):
    from transformers import Qwen3ForCausalLM

    from kleinserve.models import Variant

    full = Qwen3ForCausalLM.from_pretrained(checkpoints[Variant.DISTILLED] / "text_encoder").eval()
    ours = full_size._truncated(full, 27)
    assert len(full.model.layers) == 36 and len(ours.layers) == 27
    assert torch.equal(ours.layers[26].mlp.up_proj.weight, full.model.layers[26].mlp.up_proj.weight)
    ids = torch.randint(0, 100, (1, 16))
    with torch.inference_mode():
        full_states = full(input_ids=ids, output_hidden_states=True).hidden_states
        actual = ours(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(actual) == 28 and all(torch.equal(actual[k], full_states[k]) for k in (9, 18, 27))


@pytest.mark.parametrize("kv", [False, True], ids=["distilled", "kv"])
def test_build_gives_an_engine_and_a_stock_pipeline_that_agree(monkeypatch, kv):
    """The wiring of build(), at a small width (the real sizes need a GPU): same weights, same images; with
    kv, the KV transformer and Flux2KleinKVPipeline on a reference image (the device run's 9B-KV step)."""
    import numpy as np
    from PIL import Image

    from kleinserve.request import build_request

    small = {
        "transformer": dict(num_attention_heads=2, num_layers=1, num_single_layers=1, joint_attention_dim=96),
        "text": dict(hidden_size=32, intermediate_size=64, tie_word_embeddings=True),
        "spec": "flux.2-klein-9b" if kv else "flux.2-klein-4b",
    }
    monkeypatch.setitem(full_size.SIZES, "small", small)
    narrow = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 512}
    monkeypatch.setattr(full_size, "QWEN3", {**full_size.QWEN3, **narrow})
    monkeypatch.setitem(full_size.TRANSFORMER, "attention_head_dim", 16)
    monkeypatch.setitem(full_size.TRANSFORMER, "axes_dims_rope", (4, 4, 4, 4))
    torch.manual_seed(0)
    engine, pipe = full_size.build("small", torch.device("cpu"), torch.float32, kv=kv)
    references = [Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))]
    images = references if kv else []
    request = build_request(engine.spec, prompt="a lighthouse", images=images, width=64, height=64, seed=3)
    ours = engine.generate([request], output="float")[0].images[0]
    extra = {"image": images} if kv else {"guidance_scale": 1.0}
    theirs = pipe(prompt=request.prompt, width=64, height=64, num_inference_steps=4, output_type="np",
                  generator=torch.Generator("cpu").manual_seed(3), **extra).images[0]  # fmt: skip
    assert engine.spec.id == ("flux.2-klein-9b-kv" if kv else "flux.2-klein-4b")
    assert ours.shape == (64, 64, 3) and np.abs(ours - theirs).max() <= 1e-4
