"""Prompt encoding: Qwen3 chat template -> 512 tokens -> hidden states of layers 9, 18, 27, side by side."""

from __future__ import annotations

import torch

HIDDEN_STATE_LAYERS = (9, 18, 27)
MAX_TOKENS = 512


class PromptEncoder:
    def __init__(self, tokenizer, text_encoder: torch.nn.Module):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    def tokenize(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        tokens = self.tokenizer(
            text, return_tensors="pt", padding="max_length", truncation=True, max_length=MAX_TOKENS
        )
        return tokens["input_ids"], tokens["attention_mask"]

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), 512, 3 * hidden) in the text encoder's dtype, on its device."""
        ids, masks = zip(*(self.tokenize(p) for p in prompts), strict=True)
        device = next(self.text_encoder.parameters()).device
        output = self.text_encoder(
            input_ids=torch.cat(ids).to(device),
            attention_mask=torch.cat(masks).to(device),
            output_hidden_states=True,
            use_cache=False,
        )
        stacked = torch.stack([output.hidden_states[k] for k in HIDDEN_STATE_LAYERS], dim=1)
        batch, layers, length, hidden = stacked.shape
        return stacked.permute(0, 2, 1, 3).reshape(batch, length, layers * hidden)


def text_position_ids(length: int, device: torch.device) -> torch.Tensor:
    """(length, 4) ids (t, h, w, l) = (0, 0, 0, l)."""
    ids = torch.zeros(length, 4, dtype=torch.long)
    ids[:, 3] = torch.arange(length)
    return ids.to(device)
