"""Differential privacy: the accounting, the per-row gradients DP-SGD clips, and a DP fit end to end."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tabdifflm import DiffLMSynthesizer
from tabdifflm.diffusion import MLPDenoiser, edm_noise, edm_terms
from tabdifflm.dp import DPSGD, PrivacyLedger, epsilon_of, per_row_grads, plan_noise, vmap_grads

pytest.importorskip("opacus")


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 50, n)
    return pd.DataFrame({"a": a, "b": np.where(a > 25, "hi", "lo"), "x": np.round(rng.normal(size=n), 2)})


def test_planned_noise_spends_the_budget_and_more_noise_spends_less():
    stages = {"vae": (0.01, 2000), "diffusion": (0.2, 300)}
    for eps in (1.0, 3.0, 10.0):
        noise = plan_noise(eps, 1e-5, stages)
        spent = epsilon_of([(noise[k], q, t) for k, (q, t) in stages.items()], 1e-5)
        assert 0.97 * eps <= spent <= eps
    assert plan_noise(1.0, 1e-5, stages)["vae"] > plan_noise(10.0, 1e-5, stages)["vae"]
    # a stage with many steps does not drown the other in noise: each gets its own multiplier
    alone = plan_noise(3.0, 1e-5, {"vae": stages["vae"]})["vae"]
    assert plan_noise(3.0, 1e-5, stages)["vae"] < 2 * alone


def test_per_row_gradients_sum_to_the_batch_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    rows = list(range(5))
    g = per_row_grads(lambda r: ((lin(x[r]) - y[r]) ** 2).mean(), rows, list(lin.parameters()))
    batch = torch.autograd.grad(((lin(x) - y) ** 2).mean(1).sum(), list(lin.parameters()))
    for per_row, whole in zip(g, batch):
        assert per_row.shape == (5, *whole.shape)
        torch.testing.assert_close(per_row.sum(0), whole)


def test_vmap_gradients_of_the_denoiser_match_a_loop():
    torch.manual_seed(0)
    net = MLPDenoiser(6, hidden=16, t_dim=8)
    x = torch.randn(4, 6)
    sigma, noise = edm_noise(x, torch.Generator().manual_seed(1))
    fast = vmap_grads(net, lambda f, *row: edm_terms(f, *row).mean(), x, sigma, noise)
    slow = per_row_grads(lambda r: edm_terms(net, x[r], sigma[r], noise[r]).mean(), list(range(4)),
                         list(net.parameters()))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dpsgd_clips_each_row_and_counts_its_steps():
    """Without noise, a step moves the weights by the mean of the per-row gradients clipped to the norm."""
    lin = torch.nn.Linear(3, 1, bias=False)
    ledger = PrivacyLedger(epsilon=1.0, delta=1e-5, max_grad_norm=0.5)
    ledger.noise, ledger.planned, ledger.taken = {"s": 0.0}, {"s": (0.5, 1)}, {"s": [0.5, 0]}
    dp = DPSGD(torch.optim.SGD(lin.parameters(), lr=1.0), ledger, "s", n_rows=4, generator=torch.Generator())
    before = lin.weight.detach().clone()
    grads = torch.tensor([[[3.0, 4.0, 0.0]], [[0.0, 0.0, 0.1]]])  # norms 5 (clipped to 0.5) and 0.1
    dp.step([grads])
    want = (grads[0] * 0.1 + grads[1]) / 2  # summed, over the expected batch (0.5 x 4 rows)
    torch.testing.assert_close(before - lin.weight.detach(), want)
    assert ledger.taken["s"][1] == 1


@pytest.fixture(scope="module")
def private(tiny_kwargs):
    kw = {**tiny_kwargs, "max_epochs": 1, "aux_steps": 1, "diffusion_train_steps": 20}
    s = DiffLMSynthesizer(dp_epsilon=3.0, **kw)
    return s, s.fit(_rows(80))


def test_dp_fit_reports_the_epsilon_it_spent_and_trains_every_row(private):
    _, s = private
    rep = s.privacy_report_["differential_privacy"]
    assert rep["target_epsilon"] == 3.0 and rep["delta"] == pytest.approx(1 / 800)
    assert 2.9 <= rep["epsilon"] <= 3.0  # every planned step ran
    vae = rep["stages"]["vae"]
    assert vae["steps"] == vae["planned_steps"] == 10 * 2  # 80 rows / batch 8, each step with one heads-only step
    assert rep["stages"]["diffusion"]["planned_steps"] == 2  # a tenth of diffusion_train_steps
    assert "val_nll" not in s.history_["vae"][-1]  # no validation slice under DP
    assert torch.equal(s.latent_mean_, torch.zeros_like(s.latent_mean_))
    assert s.diffusion_sigma_min_ == 0.002 and "dp_epsilon" in s.history_["prior_calibration"]["why"]
    out = s.sample(12)
    assert len(out) == 12 and list(out.columns) == ["a", "b", "x"]


def test_dp_fit_leaves_the_text_encoder_and_decoder_as_pretrained(private, tiny_encoder_dir):
    from transformers import AutoModel

    _, s = private
    ref = AutoModel.from_pretrained(tiny_encoder_dir)
    for (name, p), q in zip(s.encoder_.backbone.named_parameters(), ref.parameters()):
        assert torch.equal(p.detach().cpu(), q), name


def test_dp_fit_cut_short_reports_less_than_planned(tiny_kwargs, monkeypatch):
    from tabdifflm import training

    real = training.train_vae

    def one_epoch_of_two(*a, **kw):  # as if max_time ended the VAE halfway
        kw["max_epochs"] = 1
        return real(*a, **kw)

    monkeypatch.setattr("tabdifflm.synthesizer.train_vae", one_epoch_of_two)
    kw = {**tiny_kwargs, "max_epochs": 2, "aux_steps": 0, "diffusion_train_steps": 10}
    rep = DiffLMSynthesizer(dp_epsilon=2.0, **kw).fit(_rows(80)).privacy_report_["differential_privacy"]
    assert rep["stages"]["vae"]["steps"] == rep["stages"]["vae"]["planned_steps"] // 2
    assert rep["epsilon"] < 2.0


@pytest.mark.parametrize("params, word", [
    ({"dp_epsilon": 1.0, "prior": "gaussian"}, "prior"),
    ({"dp_epsilon": 1.0, "latent_head_context": True}, "latent_head_context"),
    ({"dp_epsilon": 0.0}, "dp_epsilon"),
    ({"dp_epsilon": float("inf")}, "dp_epsilon"),
    ({"dp_epsilon": 1.0, "dp_delta": 1.5}, "dp_delta"),
    ({"dp_epsilon": 1.0, "dp_max_grad_norm": -1}, "dp_max_grad_norm"),
])
def test_bad_dp_settings_name_the_parameter(tiny_kwargs, params, word):
    with pytest.raises(ValueError, match=word):
        DiffLMSynthesizer(**{**tiny_kwargs, **params}).fit(_rows(40))


@pytest.mark.parametrize("heads_only", [False, True])
def test_batched_per_row_gradients_equal_row_by_row_ones(private, heads_only):
    """The one-pass per-row gradients (cotangents at the latent path, pulled back by vmap) are the gradients
    of each row's loss computed alone."""
    from tabdifflm.dp import per_row_grads
    from tabdifflm.model import RowVAE
    from tabdifflm.schema import frame_rows
    from tabdifflm.serialization import encoder_text
    from tabdifflm.training import VAEData

    _, s = private
    rows = frame_rows(_rows(6, seed=3), s.schema_)
    enc = [s._grammar.encode(r) for r in rows]
    data = VAEData(s._enc_tok, [encoder_text(s.schema_, r) for r in rows], [t for t, _ in enc], [q for _, q in enc],
                   s._grammar.done, features=s.featurizer_.transform(rows))
    vae = RowVAE(s.encoder_, s.row_model(), column_loss="column", aux_weight=1.0).eval()  # no dropout
    params = [p for n, p in vae.named_parameters() if p.requires_grad and not n.startswith("encoder.backbone")]
    eps = torch.randn(6, s.latent_dim, generator=torch.Generator().manual_seed(0))
    fast, nll = vae.private_grads(*data.batch(range(6)), eps, 0.01, heads_only, params)
    slow = per_row_grads(lambda r: vae(*data.batch(r), eps[r], 0.01, heads_only).loss, list(range(6)), params)
    assert nll.shape == (6,) and bool((nll > 0).all())
    for p, a, b in zip(params, fast, slow):
        assert a.shape == (6, *p.shape)
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    if heads_only:  # the injector takes no part in a heads-only step
        inj = {id(p) for p in s.injector_.parameters()}
        assert all(float(g.abs().sum()) == 0 for p, g in zip(params, fast) if id(p) in inj)
