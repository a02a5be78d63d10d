"""The denoising loop: the empirical-mu flow-matching schedule, seeded noise, and Euler steps.

One `DenoiseBatch` is a set of images that share size, steps, guidance and reference layout, so
they share position ids and can run as one transformer batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from kleinserve.engine.vae import grid_position_ids


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """BFL's fit of the schedule shift to image token count and step count."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    m_200 = a2 * image_seq_len + b2
    m_10 = a1 * image_seq_len + b1
    a = (m_200 - m_10) / 190.0
    b = m_200 - 200.0 * a
    return float(a * num_steps + b)


def sigma_schedule(num_steps: int, image_seq_len: int) -> torch.Tensor:
    """(num_steps + 1,) float32: linspace(1, 1/n, n) shifted exponentially by mu, then a final 0."""
    sigmas = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32)
    mu = empirical_mu(image_seq_len, num_steps)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    return torch.cat([torch.from_numpy(shifted).to(torch.float32), torch.zeros(1)])


def seeded_noise(seed: int, channels: int, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(1, channels, height, width) drawn on the CPU like diffusers' randn_tensor with one generator."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, channels, height, width), generator=generator, dtype=dtype)


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """x <- x + (sigma_next - sigma) * v, accumulated in float32 and stored back in the model dtype."""
    return (latents.to(torch.float32) + (sigma_next - sigma) * velocity).to(velocity.dtype)


@dataclass
class DenoiseBatch:
    latents: torch.Tensor  # (B, N, C) packed noise, model dtype
    height: int  # in tokens
    width: int
    prompt_embeds: torch.Tensor  # (B, 512, D)
    text_ids: torch.Tensor  # (512, 4)
    steps: int
    guidance: float = 1.0
    negative_embeds: torch.Tensor | None = None  # (B, 512, D); given exactly when CFG is on
    references: torch.Tensor | None = None  # (B, R, C) reference tokens
    reference_ids: torch.Tensor | None = None  # (R, 4)
    kv_cache_references: bool = False  # 9B-KV: compute reference K/V once, reuse after step 0

    @property
    def uses_cfg(self) -> bool:
        return self.negative_embeds is not None


# (step, total steps, denoised): `denoised()` computes the current estimate of the clean latents (B, N, C)
# only when called, so a progress listener that wants no preview costs nothing.
StepCallback = Callable[[int, int, Callable[[], torch.Tensor]], None]


def denoised_estimate(latents: torch.Tensor, velocity: torch.Tensor, sigma) -> torch.Tensor:
    """x0 = x_sigma - sigma * v: where the flow would land if it went straight from here."""
    return latents.to(torch.float32) - sigma * velocity.to(torch.float32)


class Denoiser:
    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer

    @torch.inference_mode()
    def run(self, batch: DenoiseBatch, on_step: StepCallback | None = None) -> torch.Tensor:
        """Euler-integrate the flow from noise to the clean packed latents (B, N, C)."""
        device = batch.latents.device
        latent_ids = grid_position_ids(batch.height, batch.width, 0, device)
        sigmas = sigma_schedule(batch.steps, batch.latents.shape[1]).to(device)
        timesteps = sigmas[:-1] * 1000
        latents = batch.latents
        kv_cache = None
        for step in range(batch.steps):
            # One timestep row for the whole batch (all share it): the modulation is then computed
            # at batch size 1 and broadcast, so no image's arithmetic depends on its batch size.
            timestep = timesteps[step].expand(1).to(latents.dtype) / 1000
            if batch.kv_cache_references and batch.references is not None:
                velocity, kv_cache = self._predict_kv(batch, latents, latent_ids, timestep, kv_cache)
            else:
                velocity = self._predict(batch, latents, latent_ids, timestep)
            if on_step is not None:
                denoised = partial(denoised_estimate, latents, velocity, sigmas[step])
            latents = euler_step(latents, velocity, sigmas[step], sigmas[step + 1])
            if on_step is not None:
                on_step(step + 1, batch.steps, denoised)
        return latents

    def _predict(self, batch, latents, latent_ids, timestep) -> torch.Tensor:
        hidden, ids = latents, latent_ids
        if batch.references is not None:
            hidden = torch.cat([latents, batch.references], dim=1)
            ids = torch.cat([latent_ids, batch.reference_ids], dim=0)
        hidden = hidden.to(self.transformer.dtype)
        velocity = self._forward(hidden, batch.prompt_embeds, ids, batch.text_ids, timestep)[0]
        velocity = velocity[:, : latents.shape[1]]
        if batch.uses_cfg:
            uncond = self._forward(hidden, batch.negative_embeds, ids, batch.text_ids, timestep)[0]
            uncond = uncond[:, : latents.shape[1]]
            velocity = uncond + batch.guidance * (velocity - uncond)
        return velocity

    def _forward(self, hidden, embeds, img_ids, txt_ids, timestep, **kv) -> tuple:
        return self.transformer(
            hidden_states=hidden,
            encoder_hidden_states=embeds,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=None,
            return_dict=False,
            **kv,
        )

    def _predict_kv(self, batch, latents, latent_ids, timestep, kv_cache):
        """Step 0 runs references (first) with the noise and caches their K/V; later steps reuse it."""
        if kv_cache is None:
            hidden = torch.cat([batch.references, latents], dim=1).to(self.transformer.dtype)
            ids = torch.cat([batch.reference_ids, latent_ids], dim=0)
            velocity, kv_cache = self._forward(
                hidden,
                batch.prompt_embeds,
                ids,
                batch.text_ids,
                timestep,
                kv_cache_mode="extract",
                num_ref_tokens=batch.references.shape[1],
            )
            return velocity, kv_cache
        velocity = self._forward(
            latents.to(self.transformer.dtype),
            batch.prompt_embeds,
            latent_ids,
            batch.text_ids,
            timestep,
            kv_cache=kv_cache,
            kv_cache_mode="cached",
        )[0]
        return velocity, kv_cache
