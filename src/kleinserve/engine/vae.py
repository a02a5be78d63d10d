"""The latent space: VAE encode/decode, 2x2 patchify, BatchNorm normalization, token packing."""

from __future__ import annotations

import torch


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), 2x2 neighbourhoods into channels."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return latents.reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    latents = latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return latents.reshape(b, c // 4, h * 2, w * 2)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C) tokens in row-major order."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h * w).permute(0, 2, 1)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, _, c = tokens.shape
    return tokens.reshape(b, height, width, c).permute(0, 3, 1, 2)


def grid_position_ids(height: int, width: int, t: int, device: torch.device) -> torch.Tensor:
    """(height*width, 4) ids (t, row, col, 0) in the order `pack` lays tokens out."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ids = torch.stack([torch.full_like(rows, t), rows, cols, torch.zeros_like(rows)], dim=-1)
    return ids.reshape(-1, 4).to(device)


class LatentCodec:
    """Pixels <-> normalized, patchified latents of one AutoencoderKLFlux2."""

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        self.bn_mean = vae.bn.running_mean.view(1, -1, 1, 1)
        self.bn_std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)

    @property
    def pixels_per_token(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) * 2

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> normalized (B, 4*latent, H/16, W/16); the distribution's mode."""
        pixels = pixels.to(device=self.bn_mean.device, dtype=self.vae.dtype)
        latents = patchify(self.vae.encode(pixels).latent_dist.mode())
        return (latents - self.bn_mean.to(latents.dtype)) / self.bn_std.to(latents.dtype)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4*latent, h, w) normalized -> (B, 3, 16h, 16w) in [0, 1].

        Images are decoded one at a time: convolution kernels pick different algorithms by batch
        size, and an image must not change with the company it was batched in.
        """
        latents = latents * self.bn_std.to(latents.dtype) + self.bn_mean.to(latents.dtype)
        latents = unpatchify(latents).to(self.vae.dtype)
        pixels = torch.cat([self.vae.decode(one, return_dict=False)[0] for one in latents.split(1)])
        return (pixels * 0.5 + 0.5).clamp(0, 1)
