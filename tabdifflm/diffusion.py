"""Latent diffusion (EDM, Karras et al. 2022, as TabSyn uses it): MLP denoiser, loss, Heun sampler."""
from __future__ import annotations

import math

import torch
from torch import nn

SIGMA_DATA = 0.5


class MLPDenoiser(nn.Module):
    """x [B, D], c_noise [B] -> F(x) [B, D]; sinusoidal embedding of c_noise added after the input projection."""

    def __init__(self, dim: int, hidden: int = 1024, t_dim: int = 256):
        super().__init__()
        self.t_dim = t_dim
        self.inp = nn.Linear(dim, t_dim)
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.net = nn.Sequential(
            nn.Linear(t_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, t_dim), nn.SiLU(),
            nn.Linear(t_dim, dim),
        )

    def forward(self, x, c_noise):
        half = self.t_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=x.device) / half)
        ang = c_noise.float()[:, None] * freqs[None] * 1000
        emb = torch.cat([ang.cos(), ang.sin()], -1)
        return self.net(self.inp(x) + self.t_mlp(emb))


def denoise(net, x, sigma):
    """EDM preconditioning: D(x; sigma) = c_skip x + c_out F(c_in x, ln(sigma)/4). sigma: [B] or scalar."""
    sigma = sigma.reshape(-1, 1).to(x.device) if torch.is_tensor(sigma) else torch.full((x.shape[0], 1), float(sigma),
                                                                                         device=x.device)
    c_skip = SIGMA_DATA ** 2 / (sigma ** 2 + SIGMA_DATA ** 2)
    c_out = sigma * SIGMA_DATA / (sigma ** 2 + SIGMA_DATA ** 2).sqrt()
    c_in = 1 / (SIGMA_DATA ** 2 + sigma ** 2).sqrt()
    return c_skip * x + c_out * net(c_in * x, sigma.log().flatten() / 4)


def edm_loss(net, x, generator=None):
    """EDM training loss on clean latents x [B, D]: ln sigma ~ N(-1.2, 1.2^2), weighted denoising MSE."""
    sigma, noise = edm_noise(x, generator)
    return edm_terms(net, x, sigma, noise).mean()


def edm_noise(x, generator=None):
    """The noise level sigma [B, 1] and the noise [B, D] for a batch of latents x [B, D]."""
    # drawn on the generator's device (the CPU) and moved: the same draws on every device
    sigma = (torch.randn(x.shape[0], 1, generator=generator) * 1.2 - 1.2).exp().to(x.device)
    return sigma, torch.randn(x.shape, generator=generator).to(x.device)


def edm_terms(net, x, sigma, noise):
    """Each row's weighted denoising error [B] for latents x [B, D] noised by ``sigma * noise``."""
    weight = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
    return (weight * (denoise(net, x + noise * sigma, sigma) - x) ** 2).mean(1)


@torch.no_grad()
def sample_heun(net, n: int, dim: int, steps: int = 50, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0, generator=None):
    """Heun's 2nd-order sampler over the Karras sigma schedule. Returns [n, dim] on the net's device."""
    i = torch.arange(steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + i / max(steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    sigmas = torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()
    x = torch.randn(n, dim, generator=generator).to(next(net.parameters()).device) * sigmas[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoise(net, x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - denoise(net, x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = x_next
    return x
