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
