import torch

from tabdifflm.diffusion import MLPDenoiser, denoise, edm_loss, sample_heun
from tabdifflm.training import train_diffusion


def test_preconditioning_is_identity_at_zero_noise():
    net = MLPDenoiser(3, hidden=16, t_dim=8)
    x = torch.randn(5, 3)
    assert torch.allclose(denoise(net, x, torch.full((5,), 1e-6)), x, atol=1e-4)


def test_learns_a_shifted_gaussian():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(2000, 2, generator=g) * 0.3 + torch.tensor([1.0, -1.0])
    net0 = MLPDenoiser(2, hidden=64, t_dim=32)
    with torch.no_grad():
        before = float(edm_loss(net0, data[:512], generator=torch.Generator().manual_seed(1)))
    net, hist = train_diffusion(data, steps=400, deadline=float("inf"), batch_size=256, hidden=64, generator=g,
                                verbose=False)
    with torch.no_grad():
        after = float(edm_loss(net, data[:512], generator=torch.Generator().manual_seed(1)))
    assert after < before
    x = sample_heun(net, 1000, 2, steps=30, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -1.0]), atol=0.15)
    assert torch.allclose(x.std(0), torch.tensor([0.3, 0.3]), atol=0.15)


def test_sampler_is_seeded():
    net = MLPDenoiser(4, hidden=16, t_dim=8)
    a = sample_heun(net, 3, 4, steps=5, generator=torch.Generator().manual_seed(7))
    b = sample_heun(net, 3, 4, steps=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


class _Exact(torch.nn.Module):
    """A denoiser given in closed form by ``target(x, sigma)`` [B, D], written in EDM's preconditioned form."""

    def __init__(self, points):
        super().__init__()
        self.p = torch.nn.Parameter(points, requires_grad=False)

    def forward(self, x_in, c_noise):
        from tabdifflm.diffusion import SIGMA_DATA

        sigma = (4 * c_noise).exp()[:, None]  # [B, 1]
        x = x_in * (SIGMA_DATA ** 2 + sigma ** 2).sqrt()
        c_skip = SIGMA_DATA ** 2 / (sigma ** 2 + SIGMA_DATA ** 2)
        c_out = sigma * SIGMA_DATA / (sigma ** 2 + SIGMA_DATA ** 2).sqrt()
        return (self.target(x, sigma) - c_skip * x) / c_out


class _Memoriser(_Exact):
    """The exact denoiser of its points: the softmax(-|x - p|^2 / 2 sigma^2)-weighted mean of them, what a
    denoiser trained to the end on them learns."""

    def target(self, x, sigma):
        return torch.softmax(-torch.cdist(x, self.p) ** 2 / (2 * sigma ** 2), 1) @ self.p


class _Broad(_Exact):
    """The exact denoiser of N(0, 9 I): its draws spread far wider than the points."""

    def target(self, x, sigma):
        return x * 9 / (9 + sigma ** 2)


def test_closer_share_is_half_for_the_same_distances_and_one_for_copies():
    from tabdifflm.diffusion import closer_share

    d = torch.rand(300, generator=torch.Generator().manual_seed(0))
    assert closer_share(d, d) == 0.5
    assert closer_share(torch.zeros(10), d) == 1.0
    assert closer_share(d + 2, d) == 0.0


def test_closer_shares_standard_error_matches_the_bootstrap_and_shrinks_with_the_samples():
    """DeLong's standard error of the share agrees with a bootstrap's spread, halves with four times the
    points, and is infinite where one sample has a single point; the rows' report interval is built on it."""
    import numpy as np

    from tabdifflm.diffusion import closer_share, closer_share_se
    from tabdifflm.metrics import closer_than_unseen

    g = torch.Generator().manual_seed(0)
    d_new, d_unseen = torch.rand(400, generator=g) * 1.1, torch.rand(200, generator=g)
    se = closer_share_se(d_new, d_unseen)
    boot = [closer_share(d_new[torch.randint(400, (400,), generator=g)],
                         d_unseen[torch.randint(200, (200,), generator=g)]) for _ in range(1000)]
    assert abs(se - np.std(boot)) < 0.15 * se
    share, (lo, hi) = closer_than_unseen(d_new.numpy(), d_unseen.numpy())
    assert share == closer_share(d_new, d_unseen) and abs((hi - lo) - 3.92 * se) < 1e-9
    big = closer_share_se(torch.rand(1600, generator=g) * 1.1, torch.rand(800, generator=g))
    assert 0.4 * se < big < 0.6 * se
    assert closer_share_se(d_new[:1], d_unseen) == np.inf


def _manifold(n, seed=0):
    """n points on a random plane in 16 dimensions (latents of real rows lie near a low-dimensional set)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) @ (torch.randn(2, 16, generator=g) / 4)


def test_stopping_the_sampler_early_turns_a_memorisers_copies_into_blends():
    """At EDM's sigma_min the memoriser's draws are its training points, every draw nearer a training point
    than any unseen point is; stopped at a larger sigma they are weighted means of nearby training points,
    no longer copies. With no sigma of the grid as new as unseen points, the last one tried is kept."""
    from tabdifflm.diffusion import SIGMA_MIN, calibrate_sigma_min

    pts = _manifold(300)
    train, unseen = pts[:200], pts[200:]
    net = _Memoriser(train)
    z = sample_heun(net, 300, 16, steps=30, generator=torch.Generator().manual_seed(1))
    assert torch.cdist(z, train).min(1).values.max() < 1e-2  # copies (up to cdist's rounding)
    sigma, tried = calibrate_sigma_min(net, train, unseen, steps=30, n=300, grid=(SIGMA_MIN, 0.2, 0.5))
    assert [t["sigma_min"] for t in tried] == [SIGMA_MIN, 0.2, 0.5] and sigma == 0.5
    shares = [t["closer_than_unseen"] for t in tried]
    assert shares[0] == 1.0 and shares[1] < 0.95 and shares[2] < 0.8


def test_calibration_keeps_the_first_sigma_whose_draws_are_as_new_as_unseen_points(monkeypatch):
    """Draws that sit sigma away from a training point against unseen points 0.5 away: every sigma below 0.5
    scores 1, and the sampler stops at the first sigma of the grid from 0.5 up."""
    import tabdifflm.diffusion as diffusion

    train = _manifold(200)
    step = torch.nn.functional.normalize(torch.randn(200, 16, generator=torch.Generator().manual_seed(3)), dim=1)
    unseen = train[:100] + 0.5 * step[:100] + 1e-3  # nearest training point about 0.5 away
    monkeypatch.setattr(diffusion, "sample_heun", lambda net, n, dim, steps, sigma_min, generator:
                        train[:n] + sigma_min * step[:n])
    sigma, tried = diffusion.calibrate_sigma_min(_Memoriser(train), train, unseen, n=100,
                                                 grid=(0.002, 0.1, 0.3, 0.7, 1.0))
    assert sigma == 0.7 and [t["closer_than_unseen"] for t in tried][:3] == [1.0, 1.0, 1.0]
    assert tried[-1]["closer_than_unseen"] <= 0.5 and len(tried) == 4


def test_calibration_needs_the_share_below_half_with_confidence_not_on_the_point_estimate(monkeypatch):
    """Draws at sigma 0.5 are exactly as far from the training points as the unseen points (share 0.5, which
    a point estimate would accept); their upper 95 % bound is above 0.5, so the sampler goes on to 0.7,
    where the draws sit further out than every unseen point."""
    import tabdifflm.diffusion as diffusion

    train = _manifold(200)
    step = torch.nn.functional.normalize(torch.randn(200, 16, generator=torch.Generator().manual_seed(3)), dim=1)
    unseen = train[:100] + 0.5 * step[:100]
    monkeypatch.setattr(diffusion, "sample_heun", lambda net, n, dim, steps, sigma_min, generator:
                        train[:n] + sigma_min * step[:n])
    sigma, tried = diffusion.calibrate_sigma_min(_Memoriser(train), train, unseen, n=100, grid=(0.3, 0.5, 0.7))
    assert tried[1]["closer_than_unseen"] == 0.5 and tried[1]["upper_95"] > 0.5
    assert sigma == 0.7 and tried[2]["upper_95"] <= 0.5


def test_a_prior_whose_draws_are_already_new_keeps_edms_sigma_min():
    from tabdifflm.diffusion import SIGMA_MIN, calibrate_sigma_min

    g = torch.Generator().manual_seed(0)
    train = torch.randn(200, 4, generator=g)
    near = train[:50] + 0.01  # "unseen" points nearer the training points than the broad prior's draws
    sigma, tried = calibrate_sigma_min(_Broad(train), train, near, steps=10, n=100)
    assert sigma == SIGMA_MIN and len(tried) == 1 and tried[0]["closer_than_unseen"] == 0.0
