"""Latent diffusion (EDM, Karras et al. 2022, as TabSyn uses it): MLP denoiser, loss, Heun sampler."""
from __future__ import annotations

import math
import time

import torch
from torch import nn

SIGMA_DATA = 0.5
SIGMA_MIN = 0.002  # EDM's (and the paper's) last noise level
# where the sampler may stop instead, in the prior's units (latents normalised as (mu - mean) / 2). It ends
# at 1.4: on two Adult fits that needed more, 2.0 instead of 1.4 cost 0.005-0.009 AUC and 5-6 points of
# pair-trend error for 0.6-2.6 points of DCR share (docs/design.md, "Version 0.13")
SIGMA_MIN_GRID = (SIGMA_MIN, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.2, 1.4)
Z_ONE_SIDED_95 = 1.645  # the calibration's claim (draws no nearer than unseen ones) is one-sided


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
    """Heun's 2nd-order sampler over the Karras sigma schedule. Returns [n, dim] on the net's device.

    The last step goes from ``sigma_min`` to 0 in one Euler step, which returns the denoiser's estimate
    D(x; sigma_min): above EDM's 0.002 that is a weighted mean of the training latents near x rather than
    one of them (see :func:`calibrate_sigma_min`)."""
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


@torch.no_grad()
def blend_latents(net, z: torch.Tensor, sigma: float, generator=None) -> torch.Tensor:
    """What the sampler stopped at ``sigma`` returns near each latent: D(z + sigma * noise; sigma), a weighted
    mean of the training latents around z. z [N, D] in the prior's units -> [N, D] on the CPU."""
    x = z + sigma * torch.randn(z.shape, generator=generator)
    dev = next(net.parameters()).device
    return torch.cat([denoise(net, c.to(dev), sigma).cpu() for c in x.split(4096)])


def _half_counts_above(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per point of x, twice the number of ref values above it plus the number equal to it (ties count
    half, kept in integers so sums are exact). x [n], ref [m] -> [n]."""
    r = ref.sort().values
    return 2 * len(r) - torch.searchsorted(r, x, right=True) - torch.searchsorted(r, x)


def closer_share(d_new: torch.Tensor, d_unseen: torch.Tensor) -> float:
    """Chance that a new point's distance to its nearest training point is below an unseen point's (ties
    count half): 0.5 for draws as new as unseen data, about 1 for copies. d_new [n], d_unseen [m]."""
    # P(d_new < d_unseen) + P(tie) / 2 over all (new, unseen) pairs
    return _half_counts_above(d_new, d_unseen).sum().item() / (2 * len(d_unseen) * len(d_new))


def closer_share_se(d_new: torch.Tensor, d_unseen: torch.Tensor) -> float:
    """Standard error of :func:`closer_share` (DeLong's placement values, the Mann-Whitney statistic's
    variance): both samples are finite, and with a few hundred unseen points the share moves by a few
    points from one draw of them to the next. d_new [n], d_unseen [m]."""
    n, m = len(d_new), len(d_unseen)
    if n < 2 or m < 2:
        return math.inf
    # per new point: share of unseen distances above it; per unseen point: share of new distances below it
    above = _half_counts_above(d_new, d_unseen).double() / (2 * m)
    below = 1 - _half_counts_above(d_unseen, d_new).double() / (2 * n)
    return math.sqrt(above.var().item() / n + below.var().item() / m)


@torch.no_grad()
def calibrate_sigma_min(net, z_train, z_unseen, steps: int = 50, n: int = 1000, grid=SIGMA_MIN_GRID,
                        seed: int = 0, deadline: float = math.inf) -> tuple[float, list]:
    """The smallest sigma_min in ``grid`` at which the sampler's draws sit no nearer the training latents
    than unseen latents do.

    A denoiser trained to the end on a few thousand latents learns them one by one: its last, low-noise
    steps carry each draw onto a training latent, and the decoder writes that row back. Stopping at a
    larger sigma and returning D(x; sigma) gives a weighted mean of the nearby training latents instead,
    which sits between them as an unseen row's latent does.

    z_train [N, D], z_unseen [M, D]: latents in the prior's units of the rows the prior learnt and of rows
    no stage learnt from. For each sigma, ``n`` draws (same noise for every sigma) are scored with
    :func:`closer_share` of their nearest-training-latent distances against the unseen latents'. The first
    sigma whose share is at most 0.5 with 95 % confidence (one-sided: share + 1.645 standard errors <= 0.5)
    is chosen, the last one tried if none is (or when ``deadline``, a ``time.monotonic()`` value, passes).
    Returns (sigma, [{"sigma_min", "closer_than_unseen", "upper_95"}, ...]).
    """
    dev = next(net.parameters()).device
    z_train, z_unseen = z_train.to(dev), z_unseen.to(dev)
    d_unseen = torch.cdist(z_unseen, z_train).min(1).values.cpu()
    tried = []
    for sigma in grid:
        z = sample_heun(net, n, z_train.shape[1], steps=steps, sigma_min=sigma,
                        generator=torch.Generator().manual_seed(seed))
        d_new = torch.cat([torch.cdist(c, z_train).min(1).values for c in z.split(512)]).cpu()
        share = closer_share(d_new, d_unseen)
        upper = share + Z_ONE_SIDED_95 * closer_share_se(d_new, d_unseen)
        tried.append({"sigma_min": sigma, "closer_than_unseen": round(share, 4), "upper_95": round(upper, 4)})
        if upper <= 0.5 or time.monotonic() > deadline:
            break
    return tried[-1]["sigma_min"], tried
