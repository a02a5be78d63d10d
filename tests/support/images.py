"""Test pictures: a smooth random image, a PNG data: URI, and a seeded CPU generator."""

import base64
import io

import numpy as np
import torch
from PIL import Image


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (noise alone would be an unfair test of resizing)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def data_uri(image: Image.Image) -> str:
    """The picture as a PNG data: URI (what fal's image_urls accept inline)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)
