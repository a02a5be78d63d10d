"""Reference images for editing: the exact resize/crop FLUX.2 applies, then latent tokens and their ids."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from kleinserve.engine.vae import LatentCodec, grid_position_ids, pack
from kleinserve.imaging import reduced_reference
from kleinserve.request import reference_image_size

# Reference j sits at time index 10 * (j + 1) in the 4-axis RoPE; the generated image is at 0.
REFERENCE_TIME_STEP = 10


def reference_pixels(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]: downscale (Lanczos) to <= 1 MP, center-crop to multiples of 16, RGB."""
    image = reduced_reference(image)  # a no-op for images decoded by the server (reduced already)
    crop_w, crop_h = reference_image_size(*image.size)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.float32)[None] / 255.0
    # Transposed, not copied: the VAE's convolutions pick their kernels by memory layout, and this is
    # the layout diffusers hands them, so reference latents match it bit for bit.
    return torch.from_numpy(array.transpose(0, 3, 1, 2)) * 2.0 - 1.0


def encode_references(
    codec: LatentCodec, images: tuple[Image.Image, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (1, sum(h*w), C) of all references, one after another, and their (N, 4) position ids."""
    tokens, ids = [], []
    for index, image in enumerate(images):
        latents = codec.encode(reference_pixels(image))
        _, _, h, w = latents.shape
        tokens.append(pack(latents))
        ids.append(grid_position_ids(h, w, REFERENCE_TIME_STEP * (index + 1), latents.device))
    return torch.cat(tokens, dim=1), torch.cat(ids, dim=0)
