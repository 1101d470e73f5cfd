"""A fit that stops before it memorises (the gap between training and validation NLL), why each stage
stopped, and the privacy report a fit leaves behind."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch

from tabdifflm import DiffLMSynthesizer
from tabdifflm import training


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 50, n)
    return pd.DataFrame({"a": a, "b": np.where(a > 25, "hi", "lo"), "x": np.round(rng.normal(size=n), 2)})


@pytest.fixture(scope="module")
def fitted(tiny_kwargs):
    return DiffLMSynthesizer(**tiny_kwargs).fit(_rows(240))  # 24 validation rows: the gap is watched


def test_history_says_why_each_stage_stopped_and_records_the_gap(fitted):
    assert fitted.history_["stopped"] == {"vae": "max_epochs", "diffusion": "steps", "readout": "validation"}
    assert fitted.history_["readout"][0]["epoch"] == 0 and len(fitted.history_["readout"]) >= 6  # patience 5
    rec = fitted.history_["vae"][-1]
    assert rec["memorisation_gap"] == pytest.approx((rec["val_nll"] - rec["probe_nll"]) / rec["val_nll"], abs=2e-3)


def test_history_gives_each_stages_seconds_in_order_and_within_the_fit(fitted):
    sec = fitted.history_["seconds"]
    # the filter is built as the rows are prepared, its seconds out of the preparation's
    stages = ["privacy_filter", "preparation", "vae", "prior", "calibration", "readout"]
    stages += ["marginal_correction"] * bool(fitted.marginal_rows) + ["privacy_report"]
    assert list(sec) == stages
    assert all(v >= 0 for v in sec.values()) and sec["vae"] > 0
    assert sum(sec.values()) <= fitted.fit_seconds_ + 0.5  # each rounded to 0.1 s


def test_privacy_report_compares_new_rows_with_unseen_rows(fitted, tmp_path):
    rep = fitted.privacy_report_
    assert rep["rows"] == rep["validation_rows"] == 24
    assert 0.0 <= rep["interval_95"][0] <= rep["closer_than_unseen"] <= rep["interval_95"][1] <= 1.0
    assert rep["exact_copies"] >= 0
    fitted.save(tmp_path / "m.tdl")
    assert DiffLMSynthesizer.load(tmp_path / "m.tdl").privacy_report_ == rep


def test_privacy_report_flags_copied_rows_and_clears_unseen_ones(fitted, monkeypatch):
    """Rows that are training rows score near 1 and count as copies; unseen real rows (the validation rows
    themselves) score 0.5."""
    df = _rows(240)
    n = len(df)
    gen = torch.Generator().manual_seed(fitted.seed_)
    perm = torch.randperm(n, generator=gen)  # the split fit made: the first 24 are the validation rows
    val_idx, train_idx = perm[:24], perm[24:]

    def rows_of(idx):
        frame = df.iloc[idx.numpy()]
        return lambda self, k, gen, *a, **kw: ([list(r) for r in frame.head(k).itertuples(index=False)], k, {}, 1.0)

    monkeypatch.setattr(DiffLMSynthesizer, "_sample_rows", rows_of(train_idx))
    copied = fitted._privacy_report(df, train_idx, val_idx, deadline=np.inf)
    assert copied["exact_copies"] == copied["rows"] == 24
    assert copied["closer_than_unseen"] > 0.8 and copied["interval_95"][0] > 0.5
    monkeypatch.setattr(DiffLMSynthesizer, "_sample_rows", rows_of(val_idx))
    unseen = fitted._privacy_report(df, train_idx, val_idx, deadline=np.inf)
    assert unseen["closer_than_unseen"] == 0.5 and unseen["exact_copies"] == 0


def test_the_fit_chooses_where_the_prior_sampler_stops_and_sampling_uses_it(fitted, tmp_path, monkeypatch):
    """diffusion_sigma_min="auto": the fit compares prior draws with the 24 validation rows' latents and keeps
    a sigma of the grid (history_ says which it tried); sample_latents stops there, a number set after fit
    overrides it without refitting, and the choice survives save and load."""
    from tabdifflm import diffusion, synthesizer

    rec = fitted.history_["prior_calibration"]
    assert rec["validation_rows"] == 24 and rec["sigma_min"] == fitted.diffusion_sigma_min_
    assert fitted.diffusion_sigma_min_ in diffusion.SIGMA_MIN_GRID
    tried = [t["sigma_min"] for t in rec["tried"]]
    assert tried == list(diffusion.SIGMA_MIN_GRID[:len(tried)]) and tried[-1] == fitted.diffusion_sigma_min_
    assert all(t["upper_95"] > 0.5 for t in rec["tried"][:-1])
    seen = []
    real = synthesizer.sample_heun
    monkeypatch.setattr(synthesizer, "sample_heun", lambda *a, **kw: seen.append(kw["sigma_min"]) or real(*a, **kw))
    fitted.sample_latents(4)
    fitted.set_params(diffusion_sigma_min=0.75)
    fitted.sample_latents(4)
    fitted.set_params(diffusion_sigma_min="auto")
    assert seen == [fitted.diffusion_sigma_min_, 0.75]
    fitted.save(tmp_path / "m.tdl")
    loaded = DiffLMSynthesizer.load(tmp_path / "m.tdl")
    assert loaded.diffusion_sigma_min_ == fitted.diffusion_sigma_min_ and loaded.diffusion_sigma_min == "auto"


def test_privacy_sample_zero_skips_the_report_and_too_few_rows_keep_edms_sigma_min(tiny_kwargs):
    from tabdifflm.diffusion import SIGMA_MIN

    s = DiffLMSynthesizer(**{**tiny_kwargs, "privacy_sample": 0, "max_epochs": 1}).fit(_rows(60))  # 6 validation rows
    assert s.privacy_report_ is None
    assert s.diffusion_sigma_min_ == SIGMA_MIN and "fewer than 20" in s.history_["prior_calibration"]["why"]


class _StubVAE(torch.nn.Module):
    """A stand-in for RowVAE in train_vae: one weight, which Adam moves by the learning rate each step (a
    constant gradient); ``on_step`` runs with every forward pass."""

    def __init__(self, on_step=lambda: None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.encoder = type("E", (), {"backbone": torch.nn.Linear(1, 1), "head": torch.nn.Linear(1, 4)})()
        self.aux_weight = 0.0
        self.on_step = on_step

    def forward(self, *a):
        self.on_step()
        out = type("O", (), {})()
        out.loss, out.nll = -self.w.sum(), torch.ones(2)
        return out


class _NoData:
    def batch(self, idx):
        return (None,)


def _scripted_vae(monkeypatch, gaps):
    """train_vae on a stand-in model whose evaluations return scripted NLLs: validation 10 - i at the i-th
    evaluation (always improving), probe (10 - i) x (1 - gap_i). Its one weight grows by the learning rate
    (1e-3) a step. Returns (history, reason, the weight of the state kept)."""
    calls = {"n": 0}

    def fake_eval(vae, data, idx, batch_size):
        i = calls["n"] // 2  # validation, then probe, per evaluation
        calls["n"] += 1
        g, v = gaps[min(i, len(gaps) - 1)], 10.0 - 0.1 * i
        return v if calls["n"] % 2 else v * (1 - g)

    monkeypatch.setattr(training, "evaluate_nll", fake_eval)
    vae = _StubVAE()
    hist, reason = training.train_vae(
        vae, _NoData(), torch.arange(40), torch.arange(40, 44), max_epochs=50, deadline=float("inf"), batch_size=4,
        learning_rate=1e-3, encoder_learning_rate=0.0, max_beta=0.01, min_beta=0.001, eval_every=5,
        probe_idx=list(range(4)), memorisation_gap=0.1, generator=torch.Generator().manual_seed(0), verbose=False)
    return hist, reason, float(vae.w.detach())


def test_the_vae_stops_after_two_memorising_evaluations(monkeypatch):
    hist, reason, w = _scripted_vae(monkeypatch, [0.0, 0.02, 0.05, 0.3, 0.4, 0.5, 0.6])
    assert reason == "memorisation"
    assert [h["memorisation_gap"] for h in hist] == [0.0, 0.02, 0.05, 0.3, 0.4]
    assert hist[-1]["step"] == 20  # evaluations every 5 steps: stopped at the second one over 0.1
    # the kept state is the last one under the limit (step 10), not the better-scoring memorising ones
    assert w == pytest.approx(10 * 1e-3, rel=0.05)


def test_a_lone_memorising_evaluation_does_not_stop_the_vae(monkeypatch):
    hist, reason, _ = _scripted_vae(monkeypatch, [0.0, 0.3, 0.0])
    assert reason == "max_epochs" and len(hist) > 3


def test_heads_only_steps_end_once_the_gap_passes_aux_stop_gap(tiny_kwargs, monkeypatch):
    """Every decoder step is followed by aux_steps heads-only steps until the evaluation whose gap passes the
    limit; none after it, while the decoder steps go on."""
    from tabdifflm.model import RowVAE

    calls = {"heads": 0}
    real = RowVAE.forward

    def counting(self, *a, **kw):
        heads = kw.get("heads_only", a[8] if len(a) > 8 else False)
        calls["heads"] += bool(heads) and self.training
        return real(self, *a, **kw)

    monkeypatch.setattr(RowVAE, "forward", counting)
    kw = {**tiny_kwargs, "aux_steps": 2, "aux_stop_gap": 1e-6, "memorisation_gap": None}
    s = DiffLMSynthesizer(**kw).fit(_rows(240))
    hist = s.history_["vae"]
    stopped = [r for r in hist if r.get("aux_stopped")]
    assert len(stopped) == 1 and stopped[0]["memorisation_gap"] > 1e-6
    assert all(r["memorisation_gap"] <= 1e-6 for r in hist[:hist.index(stopped[0])])
    assert calls["heads"] == 2 * stopped[0]["step"]
    assert hist[-1]["step"] > stopped[0]["step"]  # the decoder steps went on


def _clocked_vae(monkeypatch, reserve_rows, hold_back=None):
    """train_vae on a stand-in model under a fake clock: a training step takes 1 s, a validation pass 0.5 s a
    row (4 rows). Returns (history, reason, the clock at the end)."""
    clock = {"t": 0.0}
    monkeypatch.setattr(training, "time", types.SimpleNamespace(monotonic=lambda: clock["t"]))

    def fake_eval(vae, data, idx, batch_size):
        clock["t"] += 0.5 * len(idx)
        return 10.0

    def tick():
        clock["t"] += 1.0

    monkeypatch.setattr(training, "evaluate_nll", fake_eval)
    hist, reason = training.train_vae(
        _StubVAE(tick), _NoData(), torch.arange(40), torch.arange(40, 44), max_epochs=50, deadline=100.0, batch_size=4,
        learning_rate=1e-3, encoder_learning_rate=0.0, max_beta=0.01, min_beta=0.001, eval_every=5,
        reserve_rows=reserve_rows, reserve_margin=1.5, hold_back=hold_back, generator=torch.Generator().manual_seed(0),
        verbose=False)
    return hist, reason, clock["t"]


def test_the_vae_holds_back_a_later_stages_rows_at_its_measured_rate(monkeypatch):
    """reserve_rows rows at 1.5 x the validation pass's time a row (here 0.5 s) are held back from the
    deadline: 20 rows hold back 15 s of the 100, so the stage ends by 85 s instead of by 100 s."""
    hist, reason, end = _clocked_vae(monkeypatch, 0)
    assert reason == "time budget" and 95 <= end <= 100
    assert all(h["val_s"] == 2.0 for h in hist)  # four rows at 0.5 s, recorded with every evaluation
    hist, reason, end = _clocked_vae(monkeypatch, 20)
    assert reason == "time budget" and 80 <= end <= 85


def test_the_vae_holds_back_the_priors_time_as_last_timed(monkeypatch):
    """hold_back (the prior's reserve) is asked again at every evaluation and the stage follows its latest
    answer: a first timing of 40 s that later reads 10 s ends the stage by 90 s, not by 60 s."""
    timings = iter([40.0] + [10.0] * 100)
    hist, reason, end = _clocked_vae(monkeypatch, 0, hold_back=lambda: next(timings))
    assert reason == "time budget" and 85 <= end <= 90
    assert hist[0]["held_s"] == 40.0 and all(h["held_s"] == 10.0 for h in hist[1:]) and len(hist) > 2


def test_the_fit_builds_the_privacy_filter_from_the_rows_it_learnt_and_saves_it(fitted, tmp_path):
    """The filter holds the 216 training rows the model learnt from (not the 24 validation rows), its base rate
    is the validation rows' share inside, as the report says, and it comes back from the file unchanged."""
    from tabdifflm.privacy import NearestRowFilter
    from tabdifflm.schema import frame_rows

    f = fitted.privacy_filter_
    assert len(f.numbers) == len(f.codes) == len(f.radius) == 216 and f.unseen_rows == 24
    rows = frame_rows(_rows(240), fitted.schema_)
    perm = torch.randperm(240, generator=torch.Generator().manual_seed(fitted.seed_))
    again = NearestRowFilter.fit(fitted.schema_, [rows[i] for i in perm[24:]], [rows[i] for i in perm[:24]])
    assert torch.equal(again.radius, f.radius) and torch.equal(again.unseen_ratio, f.unseen_ratio)
    inside = f.inside([rows[i] for i in perm[24:]])  # a training row sits on itself, distance 0 ...
    assert inside[f.radius > 0].all() and (f.radius > 0).sum() > 200  # ... inside unless it has a twin
    assert fitted.privacy_report_["filter"] == {"mode": "strict", "radius": 0.5, "base_rate": round(f.base_rate(0.5), 4),
                                                "unseen_rows": 24}
    fitted.save(tmp_path / "m.tdl")
    loaded = DiffLMSynthesizer.load(tmp_path / "m.tdl").privacy_filter_
    assert all(torch.equal(loaded.tensors()[k], v) for k, v in f.tensors().items())


@pytest.mark.parametrize("mode, rate", [("strict", 0.0), ("match", 0.25)])
def test_sampling_turns_away_rows_inside_a_training_rows_neighbourhood(fitted, mode, rate, monkeypatch):
    """With every radius set so that about half the new rows fall inside the whole neighbourhood, "strict"
    returns none inside and "match" no more than the base rate; the rows turned away are counted and written
    again."""
    from tabdifflm.privacy import nearest
    from tabdifflm.schema import frame_rows

    f = fitted.privacy_filter_
    monkeypatch.setattr(fitted, "privacy_filter", None)  # put back as fitted at the end
    x, c = f.encode(frame_rows(fitted.sample(100, random_state=2), fitted.schema_))
    monkeypatch.setattr(f, "radius", torch.full_like(f.radius, float(nearest(x, c, f.numbers, f.codes)[0].median())))
    monkeypatch.setattr(f, "base_rate", lambda share: rate)
    monkeypatch.setattr(fitted, "privacy_filter_radius", 1.0)
    fitted.set_params(privacy_filter=mode)
    out = fitted.sample(40, random_state=1)
    inside = f.inside(frame_rows(out, fitted.schema_))
    assert len(out) == 40 and inside.float().mean() <= rate
    stats = fitted.last_sample_stats_
    assert stats["invalid_by_reason"]["privacy filter"] > 0 and stats["privacy_filter_share"] > 0
    fitted.set_params(privacy_filter=None)
    assert f.inside(frame_rows(fitted.sample(40, random_state=1), fitted.schema_)).float().mean() > 0.3


def test_a_filter_never_built_is_named_and_dp_fits_sample_without_one(tiny_kwargs):
    s = DiffLMSynthesizer(**{**tiny_kwargs, "privacy_filter": None, "privacy_sample": 0, "marginal_rows": 0,
                             "latent_readout": 0}).fit(_rows(60))
    assert s.privacy_filter_ is None
    s.set_params(privacy_filter="strict")
    with pytest.raises(ValueError, match="privacy_filter='strict'.*no fitted privacy filter"):
        s.sample(3)


def test_filter_rows_screens_given_rows_as_sampling_does(fitted):
    """The fit's own rows: every training row is inside its own neighbourhood, so "strict" keeps only
    validation rows, and "match" keeps no more inside than the base rate."""
    df = _rows(240)
    perm = torch.randperm(240, generator=torch.Generator().manual_seed(fitted.seed_))
    kept = fitted.filter_rows(df, mode="strict")
    twins = set(df.index[df.duplicated(keep=False)])  # a training row with a twin has radius 0: nothing is nearer
    assert 0 < len(kept) <= 24 + len(twins) and set(kept.index) <= set(perm[:24].tolist()) | twins
    matched = fitted.filter_rows(df, mode="match")
    from tabdifflm.schema import frame_rows

    inside = fitted.privacy_filter_.inside(frame_rows(matched, fitted.schema_), 0.5)
    assert inside.float().mean() <= fitted.privacy_filter_.base_rate(0.5) and len(matched) > len(kept)
    with pytest.raises(ValueError, match="mode must be"):
        fitted.filter_rows(df, mode="loose")
