"""Prompt encoding: Qwen3 chat template -> 512 tokens -> hidden states of layers 9, 18, 27, side by side.

Embeddings of recent prompts are kept (an LRU cache of `cache_size` prompts, on the device the encoder runs
on), so a repeated prompt skips the text encoder. One entry is 512 x 3 x hidden values: 7.5 MiB for 4B in
bf16.

An offloaded text encoder (`run_on` given) lives where it was put (the CPU) and is moved to `run_on` (the GPU)
only while it encodes prompts the cache misses, then moved back: module.to() both ways, so the GPU holds it
only during those calls, and each new prompt pays two copies of its weights over PCIe.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager

import torch

HIDDEN_STATE_LAYERS = (9, 18, 27)
MAX_TOKENS = 512
TOKEN_COUNTS_KEPT = 1024  # prompts whose token count (for usage) is remembered


class PromptEncoder:
    def __init__(
        self,
        tokenizer,
        text_encoder: torch.nn.Module,
        cache_size: int = 0,
        run_on: torch.device | None = None,
    ):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.cache_size = cache_size
        self.run_on = run_on  # offloaded: the device the encoder visits to encode; None: it runs where it is
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._token_counts: OrderedDict[str, int] = OrderedDict()  # noted while encoding: no second pass

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

    def count_tokens(self, prompt: str) -> int:
        """Tokens of the prompt the text encoder attends to (chat template included, padding not)."""
        if prompt not in self._token_counts:
            self._note_count(prompt, self.tokenize(prompt)[1])
        return self._token_counts[prompt]

    def _note_count(self, prompt: str, mask: torch.Tensor) -> None:
        self._token_counts[prompt] = int(mask.sum())
        while len(self._token_counts) > TOKEN_COUNTS_KEPT:
            self._token_counts.popitem(last=False)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), 512, 3 * hidden) in the text encoder's dtype, on its device."""
        if not self.cache_size:
            return self._encode(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for prompt, embeds in zip(missing, self._encode(missing), strict=True):
                self._cache[prompt] = embeds.clone()  # not a view pinning the whole batch
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        result = torch.stack([self._cache[p] for p in prompts])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    @torch.inference_mode()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        ids, masks = zip(*(self.tokenize(p) for p in prompts), strict=True)
        for prompt, mask in zip(prompts, masks, strict=True):
            self._note_count(prompt, mask)
        with self._visiting() as device:
            output = self.text_encoder(
                input_ids=torch.cat(ids).to(device),
                attention_mask=torch.cat(masks).to(device),
                output_hidden_states=True,
                use_cache=False,
            )
        stacked = torch.stack([output.hidden_states[k] for k in HIDDEN_STATE_LAYERS], dim=1)
        batch, layers, length, hidden = stacked.shape
        return stacked.permute(0, 2, 1, 3).reshape(batch, length, layers * hidden)

    @contextmanager
    def _visiting(self):
        """The device the encoder runs on; an offloaded encoder is moved there for the block, then home."""
        home = next(self.text_encoder.parameters()).device
        if self.run_on is None or self.run_on == home:
            yield home
            return
        self.text_encoder.to(self.run_on)
        try:
            yield self.run_on
        finally:
            self.text_encoder.to(home)


def text_position_ids(length: int, device: torch.device) -> torch.Tensor:
    """(length, 4) ids (t, h, w, l) = (0, 0, 0, l)."""
    ids = torch.zeros(length, 4, dtype=torch.long)
    ids[:, 3] = torch.arange(length)
    return ids.to(device)
