"""Shared fixtures: one tiny checkpoint per variant, built once per session in the real on-disk layout."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from kleinserve.engine import Engine
from kleinserve.models import Variant, resolve_model
from kleinserve.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {variant: write_tiny_checkpoint(root / variant.value, variant) for variant in Variant}


@pytest.fixture(scope="session")
def engines(checkpoints):
    return {variant: Engine.load(resolve_model(str(path))) for variant, path in checkpoints.items()}


@pytest.fixture(scope="session")
def engine(engines):
    return engines[Variant.DISTILLED]


@pytest.fixture(scope="session")
def spec(engine):
    return engine.spec


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (noise alone would be an unfair test of resizing)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)
