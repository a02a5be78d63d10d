"""A tiny random-weight FLUX.2 [klein] checkpoint in exactly the real diffusers on-disk layout.

Tests and CPU runs use it in place of the real weights (which cannot be downloaded here). It loads
through the same code as a real checkpoint, and through diffusers' own `from_pretrained`.
Shapes are small but structural facts are real: 36 Qwen3 layers (hidden states 9/18/27 are
taken), a 4-level VAE with 32 latent channels (sizes snap to 16), 4-axis RoPE, 2x2 patchified
latents with BatchNorm statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kleinserve.engine.loading import quiet_libraries
from kleinserve.models import PIPELINE_CLASS, Variant

TEXT_LAYERS = 36
TEXT_HIDDEN = 32
LATENT_CHANNELS = 32

SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

# Qwen3's chat template, reduced to what FLUX.2 uses: user turns and the no-thinking generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def write_tiny_checkpoint(directory: Path | str, variant: Variant = Variant.DISTILLED, seed: int = 0) -> Path:
    """Write a random checkpoint of `variant` into `directory` (created; existing files overwritten)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    tokenizer.save_pretrained(directory / "tokenizer")
    with quiet_libraries():
        _text_encoder(len(tokenizer)).save_pretrained(directory / "text_encoder")
    _transformer().save_pretrained(directory / "transformer")
    _vae().save_pretrained(directory / "vae")
    (directory / "scheduler").mkdir(exist_ok=True)
    _write_json(directory / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    _write_json(directory / "model_index.json", _model_index(variant))
    return directory


def _model_index(variant: Variant) -> dict:
    index = {
        "_class_name": PIPELINE_CLASS[variant],
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"],
    }
    if variant is not Variant.KV:
        index["is_distilled"] = variant is Variant.DISTILLED
    return index


def byte_tokenizer():
    """A byte-level BPE Qwen2 tokenizer: 256 byte symbols, a few merges, Qwen's special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    merges = []
    for pair in ["Ġ t", "h e", "Ġt he", "i n", "a n", "e r", "o n", "Ġ a", "r e", "a t"]:
        left, right = pair.split()
        vocab.setdefault(left + right, len(vocab))
        merges.append((left, right))
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=131072)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _text_encoder(vocab_size: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    )
    return Qwen3ForCausalLM(config).eval()


def _transformer():
    from diffusers import Flux2Transformer2DModel

    model = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_HIDDEN,
        timestep_guidance_channels=32,
        mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4),
        rope_theta=2000,
        guidance_embeds=False,
    )
    # Random init leaves the output projection at a scale where every step barely moves the
    # latents; widen it so velocities are O(1) like a trained model's and the sampler matters.
    with torch.no_grad():
        model.proj_out.weight.mul_(8.0)
    return model


def _vae():
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=64,
    )
    # Non-trivial BatchNorm statistics, so normalization of latents is exercised.
    with torch.no_grad():
        vae.bn.running_mean.uniform_(-0.5, 0.5)
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
