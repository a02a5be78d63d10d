"""Loading: local directories, the Hugging Face cache by id, clear errors when weights are missing."""

import json
import shutil

import pytest
import torch
from huggingface_hub import constants
from transformers import AutoTokenizer, Qwen3ForCausalLM

from kleinserve.engine import Engine
from kleinserve.engine.loading import load_components, locate_checkpoint
from kleinserve.engine.text import PromptEncoder
from kleinserve.errors import InvalidCheckpoint
from kleinserve.models import Variant, resolve_model
from kleinserve.request import build_request


def test_text_encoder_stops_at_layer_27_without_norm_or_lm_head(engine):
    text_encoder = engine.components.text_encoder
    assert len(text_encoder.layers) == 27
    assert isinstance(text_encoder.norm, torch.nn.Identity)
    assert not hasattr(text_encoder, "lm_head")


def test_truncated_encoder_gives_the_full_models_hidden_states_9_18_27(engine, checkpoints):
    full = Qwen3ForCausalLM.from_pretrained(checkpoints[Variant.DISTILLED] / "text_encoder").eval()
    assert full.config.num_hidden_layers == 36
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[Variant.DISTILLED] / "tokenizer")
    encoder = PromptEncoder(tokenizer, full)
    ids, mask = encoder.tokenize("a full prompt")
    with torch.inference_mode():
        states = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    expected = torch.cat([states[9], states[18], states[27]], dim=-1)
    torch.testing.assert_close(engine.prompts.encode(["a full prompt"]), expected, rtol=0, atol=0)


def test_cpu_defaults_to_float32_and_dtype_is_overridable(engine, checkpoints):
    assert engine.components.dtype == torch.float32 and engine.device.type == "cpu"
    bf16 = Engine.load(resolve_model(str(checkpoints[Variant.DISTILLED])), dtype="bfloat16")
    assert bf16.components.transformer.dtype == torch.bfloat16
    assert bf16.components.text_encoder.dtype == torch.bfloat16
    request = build_request(bf16.spec, prompt="bf16", width=64, height=64, seed=1)
    assert bf16.generate([request])[0].images[0].shape == (64, 64, 3)


def _fake_hub_cache(root, repo, checkpoint):
    """The Hugging Face cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(checkpoint, folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit


def test_a_registry_id_loads_from_the_hugging_face_cache(checkpoints, tmp_path, monkeypatch, engine):
    spec = resolve_model("black-forest-labs/FLUX.2-klein-4B")
    snapshot = _fake_hub_cache(tmp_path, spec.hf_repo, checkpoints[Variant.DISTILLED])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert locate_checkpoint(spec, allow_download=False) == snapshot
    from_cache = Engine.load(spec, allow_download=False)
    request = build_request(spec, prompt="from the cache", width=64, height=64, seed=3)
    assert (from_cache.generate([request])[0].images[0] == engine.generate([request])[0].images[0]).all()


def test_checkpoints_with_too_few_text_layers_or_missing_parts_are_refused(checkpoints, tmp_path):
    broken = shutil.copytree(checkpoints[Variant.DISTILLED], tmp_path / "few-layers")
    config_file = broken / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "num_hidden_layers": 20, "layer_types": None}))
    with pytest.raises(InvalidCheckpoint, match=r"has 20 layers; FLUX\.2 needs at least 27"):
        load_components(broken, Variant.DISTILLED, torch.device("cpu"), torch.float32)
    shutil.rmtree(broken / "vae")
    with pytest.raises(InvalidCheckpoint, match="no vae/ folder"):
        load_components(broken, Variant.DISTILLED, torch.device("cpu"), torch.float32)


def test_a_checkpoint_of_another_variant_than_the_model_id_is_refused(checkpoints, tmp_path, monkeypatch):
    spec = resolve_model("flux.2-klein-4b")
    _fake_hub_cache(tmp_path, spec.hf_repo, checkpoints[Variant.BASE])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        InvalidCheckpoint, match=r"holds a base checkpoint, but flux\.2-klein-4b is distilled"
    ):
        Engine.load(spec, allow_download=False)
