"""The prompt-embedding cache: a repeated prompt skips the text encoder and gives the same image."""

import numpy as np

from kleinserve.engine import Engine
from kleinserve.engine.text import PromptEncoder
from kleinserve.request import build_request


def counting_encoder(engine: Engine, cache_size: int) -> tuple[PromptEncoder, list[int]]:
    calls = []
    encoder = PromptEncoder(engine.components.tokenizer, engine.components.text_encoder, cache_size)
    original = encoder._encode

    def counted(prompts):
        calls.append(len(prompts))
        return original(prompts)

    encoder._encode = counted
    return encoder, calls


def test_cached_embeddings_equal_fresh_ones_and_skip_the_encoder(engine):
    cached, calls = counting_encoder(engine, cache_size=2)
    fresh = PromptEncoder(engine.components.tokenizer, engine.components.text_encoder)
    prompts = ["a red fox", "a blue bird", "a red fox"]
    assert np.array_equal(cached.encode(prompts).numpy(), fresh.encode(prompts).numpy())
    assert calls == [2]  # each distinct prompt once
    cached.encode(["a blue bird"])
    assert calls == [2]
    cached.encode(["a green frog"])  # evicts the least recently used ("a red fox")
    cached.encode(["a red fox"])
    assert calls == [2, 1, 1] and len(cached._cache) == 2


def test_an_engine_with_the_cache_makes_the_same_images(checkpoints, engine, spec):
    cached = Engine(spec, engine.components, prompt_cache_size=4)
    request = build_request(spec, prompt="a lighthouse", width=64, height=64, seed=3)
    expected = engine.generate([request])[0].images[0]
    for _ in range(2):  # a miss, then a hit
        assert np.array_equal(cached.generate([request])[0].images[0], expected)
