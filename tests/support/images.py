"""Test pictures: a smooth random image, and a seeded CPU generator."""

import numpy as np
import torch
from PIL import Image


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (noise alone would be an unfair test of resizing)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)
