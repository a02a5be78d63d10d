"""Reference images for edits, as a request brings them (uploaded bytes, an http(s) URL, a data URI), decoded
and reduced to what the engine uses. They decode DECODE_SLOTS at a time, on threads of their own: what
bounds their memory (imaging.py).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from kleinserve.imaging import DECODE_SLOTS, decode_image
from kleinserve.service.outbound import Outbound


def decoder_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=DECODE_SLOTS, thread_name_prefix="kleinserve-decode")


class References:
    def __init__(self, outbound: Outbound, decoder: ThreadPoolExecutor):
        """`outbound` downloads (and decodes on `decoder`, the same threads)."""
        self.outbound = outbound
        self.decoder = decoder

    async def decode(self, data: bytes, name: str, field: str) -> Image.Image:
        return await asyncio.get_running_loop().run_in_executor(self.decoder, decode_image, data, name, field)

    async def fetch(self, url: object, field: str) -> Image.Image:
        """InvalidRequest naming `field` when it cannot be had."""
        return await self.outbound.fetch_image(url, field)

    async def close(self) -> None:
        self.decoder.shutdown(wait=False, cancel_futures=True)
        await self.outbound.close()
