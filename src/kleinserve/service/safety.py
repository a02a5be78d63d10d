"""The safety checker: an image classifier run on each output when a request asks for it.

Any transformers image-classification checkpoint works (a Hub repo id, loaded from the HF cache, or a
local directory); the default is Falconsai/nsfw_image_detection. An image is flagged when the summed
probability of the classifier's unsafe labels (nsfw, porn, ...) reaches the threshold, so threshold 0
flags everything. The demo serves a tiny random-weight classifier in the same on-disk layout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from kleinserve.errors import KleinserveError
from kleinserve.request import OutputOptions
from kleinserve.settings import DEFAULT_SAFETY_MODEL, Settings

log = logging.getLogger("kleinserve")

UNSAFE_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "explicit", "unsafe"})
CLASSIFIER_FILES = ["*.json", "*.safetensors", "*.txt"]


class SafetyModelUnavailable(KleinserveError):
    """The configured classifier cannot be found or is not an NSFW classifier."""


class SafetyChecker(Protocol):
    def flags(self, images: list[np.ndarray]) -> list[bool]: ...
    def describe(self) -> str: ...


class ClassifierSafetyChecker:
    def __init__(self, directory: Path, threshold: float, device: str | None = None):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from kleinserve.engine.loading import quiet_libraries

        self.source = directory
        self.threshold = threshold
        self.unsafe = unsafe_label_ids(directory)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # The PIL backend: images arrive as uint8 arrays on the CPU, and it needs no torchvision.
        self.processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
        with quiet_libraries():
            self.model = AutoModelForImageClassification.from_pretrained(directory).to(self.device).eval()

    def scores(self, images: list[np.ndarray]) -> list[float]:
        """Probability that each HxWx3 uint8 image is unsafe."""
        import torch

        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            probabilities = self.model(**inputs).logits.float().softmax(dim=-1)
        return probabilities[:, self.unsafe].sum(dim=-1).tolist()

    def flags(self, images: list[np.ndarray]) -> list[bool]:
        return [score >= self.threshold for score in self.scores(images)]

    def describe(self) -> str:
        return f"{self.source} (threshold {self.threshold:g}, on {self.device})"


def load_safety_checker(settings: Settings) -> ClassifierSafetyChecker:
    return ClassifierSafetyChecker(locate_safety_model(settings), settings.safety_threshold, settings.device)


class SafetyScreen:
    """The safety checker where models run: loaded at start-up, then run on each job's images that asks for
    it. It has a thread of its own, so a job's check never waits behind the next batch."""

    def __init__(self):
        self.checker: SafetyChecker | None = None  # None: not loaded, nothing is flagged
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kleinserve-safety")

    async def load(self, settings: Settings) -> None:
        """Loaded before the server accepts requests; a failure stops the start-up."""
        loop = asyncio.get_running_loop()
        self.checker = await loop.run_in_executor(self.thread, load_safety_checker, settings)
        log.info("safety checker ready: %s", self.checker.describe())

    async def screen(self, arrays: list, output: OutputOptions, timings: dict) -> list[bool]:
        """Flag unsafe images (and black them out in place) when the request asks for the checker."""
        if not output.safety_check or self.checker is None:
            return [False] * len(arrays)
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        flags = await loop.run_in_executor(self.thread, self.checker.flags, arrays)
        for i, flagged in enumerate(flags):
            if flagged:
                arrays[i] = np.zeros_like(arrays[i])
        timings["safety"] = time.monotonic() - start
        return flags

    def close(self) -> None:
        self.thread.shutdown(wait=True, cancel_futures=True)


def locate_safety_model(settings: Settings) -> Path:
    """The classifier's directory: local, from the HF cache, or downloaded when allowed. Checks its labels."""
    source = settings.safety_model
    if settings.demo and source == DEFAULT_SAFETY_MODEL:
        directory = settings.demo_safety_dir
        if not (directory / "config.json").is_file():
            log.warning("building the demo safety classifier (tiny, random weights) in %s", directory)
            write_tiny_classifier(directory)
    elif Path(source).expanduser().is_dir():
        directory = Path(source).expanduser()
    else:
        directory = _from_hub(source, settings.allow_download)
    unsafe_label_ids(directory)
    return directory


def classifier_config(source: str) -> tuple[object | None, str]:
    """(config, where it came from) of the classifier `source` names, reading no weights and downloading
    nothing: the config.json of a directory or of the Hugging Face cache; for the default model when it is not
    cached, its published architecture (ViT-B/16 at 224 px, labels normal/nsfw, float32); else (None, why)."""
    from transformers import AutoConfig, ViTConfig

    directory = Path(source).expanduser()
    if not directory.is_dir():
        try:
            directory = _from_hub(source, allow_download=False)
        except SafetyModelUnavailable:
            if source != DEFAULT_SAFETY_MODEL:
                return None, f"{source} is not in the local cache: its size is unknown"
            labels = {0: "normal", 1: "nsfw"}
            config = ViTConfig(id2label=labels, label2id={v: k for k, v in labels.items()}, dtype="float32")
            return config, f"{source}'s published architecture (ViT-B/16, 224 px; not in the local cache)"
    return AutoConfig.from_pretrained(directory), f"config read from {directory}"


def _from_hub(repo_id: str, allow_download: bool) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = not allow_download or constants.HF_HUB_OFFLINE
    try:
        path = snapshot_download(repo_id, allow_patterns=CLASSIFIER_FILES, local_files_only=offline)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise SafetyModelUnavailable(
            f"the safety classifier {repo_id} is not "
            f"{'in the Hugging Face cache' if offline else 'downloadable'} ({type(exc).__name__}); "
            f"fetch it with `hf download {repo_id}`, pass --safety-model PATH, "
            "or run without it with --no-safety-checker"
        ) from exc
    return Path(path)


def unsafe_label_ids(directory: Path) -> list[int]:
    import json

    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SafetyModelUnavailable(f"{directory} holds no readable config.json: {exc}") from exc
    labels = {int(i): str(name) for i, name in (config.get("id2label") or {}).items()}
    unsafe = sorted(i for i, name in labels.items() if name.lower() in UNSAFE_LABELS)
    if not unsafe:
        raise SafetyModelUnavailable(
            f"{directory} is not an NSFW classifier: its labels are {sorted(labels.values())}, none of "
            f"{sorted(UNSAFE_LABELS)}"
        )
    return unsafe


def write_tiny_classifier(directory: Path, seed: int = 0) -> None:
    """A random-weight ViT classifier in Falconsai/nsfw_image_detection's layout (labels normal/nsfw).
    Its head is biased to 'normal', so at the default threshold it passes images; threshold 0 flags all."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from kleinserve.engine.loading import quiet_libraries

    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1},
    )  # fmt: skip
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([4.0, -4.0]))
    directory.mkdir(parents=True, exist_ok=True)
    with quiet_libraries():  # no progress bars, no "torchvision not installed" note
        model.save_pretrained(directory)
        processor = ViTImageProcessor(
            size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        processor.save_pretrained(directory)
