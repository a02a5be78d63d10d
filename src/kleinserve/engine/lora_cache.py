"""Parsed LoRA adapters kept in memory under a byte budget, least recently used evicted first.

Keyed by the file's resolved path, size and modification time, so a file replaced on disk is read again.
An adapter larger than the whole budget is still used for its batch, just not kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kleinserve.engine.lora_file import LoraWeights


@dataclass
class LoraCacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


class LoraCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, LoraWeights] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = LoraCacheStats()

    def get(self, key: tuple, load: Callable[[], LoraWeights]) -> LoraWeights:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return self._entries[key]
            self.stats.misses += 1
        weights = load()
        with self._lock:
            self._keep(key, weights)
        return weights

    def _keep(self, key: tuple, weights: LoraWeights) -> None:
        if weights.nbytes > self.max_bytes or key in self._entries:
            return
        self._entries[key] = weights
        self.stats.bytes += weights.nbytes
        while self.stats.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.stats.bytes -= evicted.nbytes
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)
