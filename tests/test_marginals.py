"""The marginal correction: categorical choices counted, turned into logits, and used where it was estimated."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

from tabdifflm import DiffLMSynthesizer
from tabdifflm.marginals import MAX_SHIFT, MIN_VISITS, choice_counts, marginal_bias


def _rows(n, seed=0):
    """b is "hi" in about 85 % of rows, whatever a is: a frequency a random model does not write by itself."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.integers(0, 50, n), "b": np.where(rng.random(n) < 0.85, "hi", "lo"),
                         "x": np.round(rng.normal(size=n), 2)})


@pytest.fixture(scope="module")
def fitted(tiny_kwargs):
    return DiffLMSynthesizer(**{**tiny_kwargs, "marginal_rows": 200}).fit(_rows(240))


def _first_group(s, column: int) -> int:
    return s._grammar.group_offsets[column]


def test_choice_counts_count_each_categorical_choice_once_per_row(fitted):
    df = _rows(240)
    encoded = [fitted._grammar.encode(r) for r in fitted._rows_of(df)]
    counts = choice_counts(fitted._grammar, [t for t, _ in encoded], [q for _, q in encoded], [1])
    g = _first_group(fitted, 1)
    assert counts.shape == (fitted._grammar.n_groups, fitted._grammar.tables.K)
    assert counts[g].sum() == len(df)  # "hi" and "lo" part at their first token: one choice a row
    assert sorted(counts[g][counts[g] > 0].tolist()) == sorted(df["b"].value_counts().tolist())
    others = torch.ones(counts.shape[0], dtype=torch.bool)
    others[g:g + fitted._grammar._positions[1]] = False
    assert counts[others].sum() == 0  # numbers are not counted


def test_marginal_bias_is_the_log_ratio_of_frequencies_and_leaves_rare_groups_alone():
    train = torch.tensor([[80.0, 20.0, 0.0], [5.0, 5.0, 0.0]])
    sampled = torch.tensor([[50.0, 50.0, 0.0], [9.0, 1.0, 0.0]])
    b = marginal_bias(train, sampled)
    assert (b[0, 0] - b[0, 1]).item() == pytest.approx(math.log(80.5 / 20.5) - math.log(50.5 / 50.5), rel=1e-5)
    assert b[0, 0] > 0 > b[0, 1] and b[0, 2] == 0  # a token neither source chooses stays untouched
    assert (b[1] == 0).all() and train[1].sum() < MIN_VISITS  # too few visits to tell from noise
    never = marginal_bias(torch.tensor([[100.0, 0.0]]), torch.tensor([[1e-6, 100.0]]))
    assert never.abs().max() == MAX_SHIFT  # clipped


def test_fit_corrects_the_categorical_frequencies_it_writes(fitted):
    """A model pushed away from the training frequency of b (its latent head's logit for "lo" raised) is
    brought back by correct_marginals: the rows it writes are at most half as far from b's training
    frequency (all the way on real models; this random one makes most choices all but certain even at
    temperature 4, which a shift moves little)."""
    rec = fitted.history_["marginal_correction"]
    assert rec["rows"] == 200 and rec["columns"] == ["b"] and rec["sigma_min"] == fitted.diffusion_sigma_min_
    assert fitted.choice_bias_ is not None
    assert fitted.choice_bias_at_ == {"sigma_min": fitted.diffusion_sigma_min_, "temperature": 1.0}
    s = DiffLMSynthesizer.__new__(DiffLMSynthesizer)
    s.__setstate__(fitted.__getstate__())  # a copy to distort
    g, K = _first_group(s, 1), s._grammar.tables.K
    lo = int(s._grammar.tables.to_local(torch.tensor(s._grammar.cols[1].encode("lo")[:1]))[0])
    assert s.choice_counts_[g, lo] > 0  # the first token of "lo", where "hi" and "lo" part
    with torch.no_grad():
        s.latent_head_.bias.view(-1, K)[g, lo] += 2.0
    s.choice_bias_ = None
    s.set_params(temperature=4.0)  # this random model's own logits make most choices all but certain
    hi = int(s._grammar.tables.to_local(torch.tensor(s._grammar.cols[1].encode("hi")[:1]))[0])
    target = float(s.choice_counts_[g, hi] / s.choice_counts_[g].sum())  # "hi" in the training slice
    off = (s.sample(400, random_state=1)["b"] == "hi").mean()
    s.correct_marginals(400, random_state=2)
    on = (s.sample(400, random_state=1)["b"] == "hi").mean()
    assert abs(on - target) < abs(off - target) / 2 and abs(off - target) > 0.1


def test_the_correction_is_used_only_at_the_stopping_point_it_was_estimated_for(fitted, tmp_path, monkeypatch):
    from tabdifflm.model import RowModel

    seen = []
    real = RowModel.generate
    monkeypatch.setattr(RowModel, "generate", lambda self, z, *a, **kw: seen.append(kw.get("choice_bias")) or
                        real(self, z, *a, **kw))
    calls = []  # per sample() call, the bias of each of its rounds (the privacy filter can ask for more)

    def draw():
        seen.clear()
        fitted.sample(4, random_state=0)
        calls.append(list(seen))

    draw()
    fitted.set_params(diffusion_sigma_min=0.9)
    with pytest.warns(UserWarning, match="correct_marginals"):
        draw()
    fitted.set_params(diffusion_sigma_min="auto", temperature=0.8)
    with pytest.warns(UserWarning, match="temperature"):
        draw()
    fitted.set_params(temperature=1.0)
    assert all(b is fitted.choice_bias_ for b in calls[0]) and calls[0]
    assert all(b is None for b in calls[1] + calls[2]) and calls[1] and calls[2]
    fitted.save(tmp_path / "m.tdl")
    loaded = DiffLMSynthesizer.load(tmp_path / "m.tdl")
    assert torch.equal(loaded.choice_bias_, fitted.choice_bias_)
    assert torch.equal(loaded.choice_counts_, fitted.choice_counts_)
    assert loaded.choice_bias_at_ == fitted.choice_bias_at_ and loaded._active_choice_bias() is not None
    loaded.set_params(marginal_rows=0)  # 0 after fit: sample without it, and without a warning
    seen.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.sample(4, random_state=0)
    assert seen and all(b is None for b in seen)


def test_bad_input_and_models_without_frequencies_get_clear_errors(fitted, tiny_kwargs):
    with pytest.raises(InvalidParameterError, match="marginal_rows"):
        DiffLMSynthesizer(**{**tiny_kwargs, "marginal_rows": -1}).fit(_rows(60))
    with pytest.raises(ValueError, match="n_rows"):
        fitted.correct_marginals(1)
    s = DiffLMSynthesizer.__new__(DiffLMSynthesizer)
    s.__setstate__(fitted.__getstate__())
    s.choice_counts_ = None  # as in a file saved before the correction existed
    with pytest.raises(ValueError, match="pass the training rows as X"):
        s.correct_marginals(64)
    s.correct_marginals(64, X=_rows(240), random_state=0)  # the frequencies read from the rows given
    assert s.choice_counts_[_first_group(s, 1)].sum() == 240


def test_marginal_rows_zero_and_differential_privacy_keep_no_correction(tiny_kwargs):
    off = DiffLMSynthesizer(**{**tiny_kwargs, "marginal_rows": 0, "max_epochs": 1}).fit(_rows(60))
    assert off.choice_bias_ is None and "marginal_correction" not in off.history_
    assert off.choice_counts_ is not None  # correct_marginals can still be called later
    dp = DiffLMSynthesizer(**{**tiny_kwargs, "dp_epsilon": 50.0, "max_epochs": 1}).fit(_rows(60))
    assert dp.choice_bias_ is None and dp.choice_counts_ is None
    assert "dp_epsilon" in dp.history_["marginal_correction"]["why"]
