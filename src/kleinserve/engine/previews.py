"""Step previews: a small RGB picture of the current denoised estimate, for progress streams.

A fixed linear map takes each latent token (normalized, patchified: 4 x latent channels) to the 2x2 RGB
pixels it covers at 1/8 of the output size (128x128 for a 1024x1024 image). The map is fitted once per
model by least squares, from the VAE's own encoding of a synthetic calibration picture, so it costs one
VAE encode at start and then one small matrix product per preview: nothing runs unless a preview is asked
for, and the denoising loop never waits on image encoding.
"""

from __future__ import annotations

import numpy as np
import torch

from kleinserve.engine.vae import LatentCodec, pack, patchify, unpack, unpatchify

CALIBRATION_SIZE = 512  # pixels per side: (512/16)^2 = 1024 tokens to fit 4C + 1 coefficients per output
RIDGE = 1e-3


class LatentPreviewer:
    def __init__(self, weight: torch.Tensor):
        self.weight = weight  # (C + 1, 12): token channels and a bias -> 2x2 RGB pixels

    @classmethod
    def fit(cls, codec: LatentCodec) -> LatentPreviewer:
        pixels = calibration_picture(CALIBRATION_SIZE)  # (1, 3, S, S) in [-1, 1]
        tokens = pack(codec.encode(pixels)).float()[0].cpu()  # (N, C)
        small = torch.nn.functional.avg_pool2d(pixels, codec.pixels_per_token // 2)  # (1, 3, S/8, S/8)
        targets = pack(patchify(small * 0.5 + 0.5))[0]  # (N, 12) in [0, 1]
        inputs = torch.cat([tokens, torch.ones(len(tokens), 1)], dim=1)
        gram = inputs.T @ inputs + RIDGE * len(tokens) * torch.eye(inputs.shape[1])
        return cls(torch.linalg.solve(gram, inputs.T @ targets))

    @torch.inference_mode()
    def render(self, tokens: torch.Tensor, height: int, width: int) -> list[np.ndarray]:
        """(B, h*w, C) denoised tokens -> B arrays of (2h, 2w, 3) uint8."""
        weight = self.weight.to(tokens.device)
        rgb = tokens.float() @ weight[:-1] + weight[-1]  # (B, N, 12)
        pictures = unpatchify(unpack(rgb, height, width)).clamp(0, 1)  # (B, 3, 2h, 2w)
        arrays = (pictures.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return list(arrays)


def calibration_picture(size: int) -> torch.Tensor:
    """Smooth colour fields, gradients and saturated patches: every hue and brightness the map must know."""
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    ramp = torch.linspace(-1, 1, size)
    smooth[0, 0, : size // 4] = ramp  # horizontal red ramp
    smooth[0, 1, :, : size // 4] = ramp[:, None]  # vertical green ramp
    patches = torch.from_numpy(rng.choice([-1.0, 1.0], (1, 3, 4, 4)).astype(np.float32))
    smooth[..., size // 2 :, size // 2 :] = torch.nn.functional.interpolate(patches, size=(size // 2,) * 2)
    return smooth.clamp(-1, 1)
