"""The published FLUX.2 [klein] shapes, as configs: what the 4B and 9B checkpoints' config.json files hold.

Used where the weights are not on disk: the memory plan (engine/memory_plan.py) counts parameters from them on
the meta device, and the full-size benchmark (benchmarks/full_size.py) builds random weights from them.
Transformer 4B = 24 heads x 128, 5 double + 20 single blocks, text width 7680 (3 x Qwen3-4B's 2560); 9B = 32
heads x 128, 8 + 24 blocks, text width 12288 (3 x Qwen3-8B's 4096); the VAE is AutoencoderKLFlux2 at
diffusers' defaults. Base and KV checkpoints share their size's shapes.
"""

from __future__ import annotations

TRANSFORMER = dict(patch_size=1, in_channels=128, attention_head_dim=128, mlp_ratio=3.0,
                   axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, timestep_guidance_channels=256,
                   guidance_embeds=False)  # fmt: skip
QWEN3 = dict(num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
             vocab_size=151936, max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6)  # fmt: skip
SIZES = {
    "4b": {
        "transformer": dict(
            num_attention_heads=24, num_layers=5, num_single_layers=20, joint_attention_dim=7680
        ),
        "text": dict(hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True),
        "spec": "flux.2-klein-4b",
    },
    "9b": {
        "transformer": dict(
            num_attention_heads=32, num_layers=8, num_single_layers=24, joint_attention_dim=12288
        ),
        "text": dict(hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False),
        "spec": "flux.2-klein-9b",
    },
}


def text_encoder_config(size: str):
    """The full Qwen3 config (36 layers) of `size`'s text encoder."""
    from transformers import Qwen3Config

    return Qwen3Config(**QWEN3, **SIZES[size]["text"])


def transformer_config(size: str) -> dict:
    return {**TRANSFORMER, **SIZES[size]["transformer"]}
