"""The tiny checkpoint is written in the real diffusers layout, for every variant."""

import json

import pytest
from transformers import AutoTokenizer

from kleinserve.cli import main
from kleinserve.models import Variant, read_variant

LAYOUT = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@pytest.mark.parametrize("variant", list(Variant))
def test_layout_and_declared_variant(checkpoints, variant):
    root = checkpoints[variant]
    for relative in LAYOUT:
        assert (root / relative).is_file(), relative
    assert read_variant(root) is variant
    index = json.loads((root / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "Qwen3ForCausalLM"]
    assert index["transformer"] == ["diffusers", "Flux2Transformer2DModel"]


def test_structural_facts_match_the_real_models(checkpoints):
    root = checkpoints[Variant.DISTILLED]
    text = json.loads((root / "text_encoder" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    transformer = json.loads((root / "transformer" / "config.json").read_text())
    scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert text["num_hidden_layers"] >= 27
    assert len(vae["block_out_channels"]) == 4 and vae["latent_channels"] == 32
    assert transformer["in_channels"] == 128 and transformer["joint_attention_dim"] == 3 * text["hidden_size"]
    assert transformer["guidance_embeds"] is False and transformer["rope_theta"] == 2000
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"]
    assert scheduler["time_shift_type"] == "exponential" and scheduler["use_dynamic_shifting"]


def test_tokenizer_renders_the_qwen_chat_template(checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[Variant.DISTILLED] / "tokenizer")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.decode(tokenizer("ünïcødé 猫")["input_ids"]) == "ünïcødé 猫"


def test_cli_writes_each_variant(tmp_path, capsys):
    for variant in Variant:
        assert main(["tiny-checkpoint", str(tmp_path / variant.value), "--variant", variant.value]) == 0
        assert read_variant(tmp_path / variant.value) is variant
    assert "wrote a tiny kv checkpoint" in capsys.readouterr().out
