"""Where a request's LoRA comes from, turned into a local safetensors file.

A `loras[i].path` is one of:
- an http(s) URL: downloaded through the outbound guard (internal addresses refused unless
  --allow-private-network allows them; size cap; timeout) into a disk cache under the data dir, by URL and by
  the content's sha256, so a URL is fetched once and equal contents are stored once;
- a file name inside --lora-dir (sub-folders allowed; no absolute paths, no `..`, no symlink leading out);
- a Hugging Face repo id `owner/repo` or `owner/repo/file.safetensors`, through huggingface_hub's cache
  (offline, a file not in the cache is a clear error).
Every failure is an InvalidRequest naming the field.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kleinserve.errors import InvalidRequest
from kleinserve.service.outbound import Outbound

if TYPE_CHECKING:
    from kleinserve.settings import Settings

HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}(/[\w./-]+\.safetensors)?$")
DEFAULT_HF_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
SAFETENSORS_START = 8  # the 8-byte header length comes first
MAX_LISTED = 500  # files the console's list shows at most


@dataclass(frozen=True)
class LoraFile:
    path: str  # relative to --lora-dir, with "/" between folders: what loras[i].path takes
    size_bytes: int


class LoraSources:
    def __init__(self, outbound: Outbound, cache_dir: Path, lora_dir: Path | None, max_bytes: int):
        self.outbound = outbound
        self.cache_dir = cache_dir
        self.lora_dir = lora_dir.resolve() if lora_dir is not None else None
        self.max_bytes = max_bytes
        self.downloads = 0  # URLs fetched (not served from the disk cache)

    async def resolve(self, source: str, field: str) -> Path:
        if source.lower().startswith(("http://", "https://")):
            return await self._url(source, field)
        local = self._in_lora_dir(source, field)
        if local is not None:
            return local
        if HF_REPO.match(source):
            return await asyncio.to_thread(self._from_hub, source, field)
        where = (
            f"a file in --lora-dir ({self.lora_dir})" if self.lora_dir else "a --lora-dir file (none is set)"
        )
        raise InvalidRequest(
            field, f"{source!r} is neither an http(s) URL, {where}, nor a Hugging Face repo id owner/repo"
        )

    def files(self, limit: int = MAX_LISTED) -> list[LoraFile]:
        """The .safetensors files in --lora-dir (the console's list): names as `path` takes them, sorted, at
        most `limit`. Symlinked folders are not entered; a symlink leading out of the folder is left out."""
        if self.lora_dir is None:
            return []
        found = []
        for folder, subfolders, names in os.walk(self.lora_dir):
            subfolders.sort()
            for name in sorted(names):
                path = Path(folder, name)
                if name.endswith(".safetensors") and not name.startswith(".") and self._inside(path):
                    found.append(LoraFile(path.relative_to(self.lora_dir).as_posix(), path.stat().st_size))
                    if len(found) == limit:
                        return found
        return found

    def _inside(self, path: Path) -> bool:
        resolved = path.resolve()
        return resolved.is_file() and resolved.is_relative_to(self.lora_dir)

    # --- URLs ---------------------------------------------------------------------------------

    async def _url(self, url: str, field: str) -> Path:
        index = self.cache_dir / "by-url" / hashlib.sha256(url.encode()).hexdigest()
        if index.is_file():
            cached = self.cache_dir / index.read_text().strip()
            if cached.is_file():
                return cached
        try:
            async with asyncio.timeout(self.outbound.timeout_s * 4):
                limit = self._limit()
                data = await self.outbound.download(url, field, max_bytes=self.max_bytes, limit=limit)
        except TimeoutError:
            raise InvalidRequest(field, f"{url} did not send the LoRA in time") from None
        name = hashlib.sha256(data).hexdigest() + ".safetensors"
        await asyncio.to_thread(self._store, name, data, index)
        self.downloads += 1
        return self.cache_dir / name

    def _store(self, name: str, data: bytes, index: Path) -> None:
        index.parent.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / name
        if not target.is_file():
            partial = target.with_suffix(f".{os.getpid()}.part")
            partial.write_bytes(data)
            partial.replace(target)
        index.write_text(name)

    def _limit(self) -> str:
        return f"LoRA files may be at most {self.max_bytes // 2**20} MiB (--lora-max-mb)"

    # --- --lora-dir ---------------------------------------------------------------------------

    def _in_lora_dir(self, name: str, field: str) -> Path | None:
        if self.lora_dir is None:
            return None
        candidate = Path(name)
        if candidate.is_absolute() or ".." in candidate.parts:
            raise InvalidRequest(field, f"{name!r} leaves --lora-dir; give a file name inside it")
        path = (self.lora_dir / candidate).resolve()
        if not path.is_relative_to(self.lora_dir):
            raise InvalidRequest(field, f"{name!r} leads out of --lora-dir (a symlink); it is not served")
        return path if path.is_file() else None

    # --- Hugging Face -------------------------------------------------------------------------

    def _from_hub(self, source: str, field: str) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        owner, repo, *rest = source.split("/")
        filename = "/".join(rest) or DEFAULT_HF_FILE
        try:
            return Path(hf_hub_download(f"{owner}/{repo}", filename))
        except LocalEntryNotFoundError:
            raise InvalidRequest(
                field,
                f"{owner}/{repo}'s {filename} is not in the Hugging Face cache and the server is offline;"
                " download it first (huggingface-cli download) or give a URL or a --lora-dir file",
            ) from None
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise InvalidRequest(field, f"{owner}/{repo}'s {filename} could not be fetched ({exc})") from None


def lora_sources(settings: Settings) -> LoraSources:
    """This process's LoRA sources, from the settings (each process fetches and caches on its own)."""
    outbound = Outbound(
        settings.allowed_private_networks,
        max_bytes=settings.lora_max_mb * 2**20,
        timeout_s=settings.image_fetch_timeout_s,
    )
    return LoraSources(outbound, settings.lora_cache_dir, settings.lora_dir, settings.lora_max_mb * 2**20)
