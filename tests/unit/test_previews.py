"""Step previews: the fitted latent->RGB map recovers a picture from its latents."""

import numpy as np
import torch
from PIL import Image

from kleinserve.engine.previews import LatentPreviewer
from kleinserve.engine.vae import patchify

from support.images import random_image


class LinearCodec:
    """A stand-in VAE whose latents are a known linear function of the pixels (as a trained VAE's nearly
    are), so the fitted map can be checked exactly: 1/8 average pool, 2x2 patchify, a random 12->128 mix."""

    pixels_per_token = 16

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.mix = torch.randn(128, 12, generator=generator)
        self.offset = torch.randn(128, 1, 1, generator=generator)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        small = patchify(torch.nn.functional.avg_pool2d(pixels * 0.5 + 0.5, 8))  # (1, 12, h, w)
        return torch.einsum("ck,bkhw->bchw", self.mix, small) + self.offset


def pixels_of(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, np.float32).transpose(2, 0, 1)[None] / 127.5 - 1)


def test_the_fitted_map_recovers_a_picture_from_its_latents():
    codec = LinearCodec()
    previewer = LatentPreviewer.fit(codec)
    image = random_image(256, 192, seed=5)  # not the calibration picture
    tokens = codec.encode(pixels_of(image)).flatten(2).transpose(1, 2)  # (1, N, 128)
    (preview,) = previewer.render(tokens, 192 // 16, 256 // 16)
    expected = np.asarray(image.resize((32, 24), Image.Resampling.BOX)).astype(int)
    assert preview.shape == (24, 32, 3) and preview.dtype == np.uint8
    assert np.abs(preview.astype(int) - expected).mean() < 3  # the ridge costs a little, nothing more
