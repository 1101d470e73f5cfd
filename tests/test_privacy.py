"""Attack-based privacy risks (anonymeter): a copy of the training rows leaks, independent rows do not."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tabdifflm.metrics import privacy_risks

pytest.importorskip("anonymeter", reason="pip install numba polars && pip install --no-deps anonymeter")


def _population(n, seed):
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    hours = rng.integers(1, 99, n)
    job = rng.choice(["clerk", "nurse", "driver", "chef", "teacher", "farmer"], n)
    city = rng.choice([f"town{i}" for i in range(30)], n)
    income = np.where(rng.random(n) < 0.3 + 0.4 * (age > 45), ">50K", "<=50K")
    return pd.DataFrame({"age": age, "hours": hours, "job": job, "city": city,
                         "weight": rng.normal(70, 12, n).round(1), "income": income})


@pytest.fixture(scope="module")
def split():
    return _population(400, 0), _population(400, 1), _population(400, 2)


def test_a_copy_of_the_training_rows_is_high_risk_and_independent_rows_are_not(split):
    train, control, independent = split
    copy = privacy_risks(train, train, control, secret="income", n_attacks=200)
    fresh = privacy_risks(independent, train, control, secret="income", n_attacks=200)
    for kind in ("singling_out", "linkability", "inference"):
        assert "error" not in copy[kind] and "error" not in fresh[kind], (copy, fresh)
        lo, hi = fresh[kind]["ci"]
        assert lo <= fresh[kind]["risk"] <= hi
        assert lo <= 0.05, (kind, fresh[kind])             # independent rows: an interval that reaches zero
        assert copy[kind]["risk"] > fresh[kind]["risk"] + 0.3, (kind, copy[kind], fresh[kind])
        for r in (copy[kind], fresh[kind]):  # the unclipped residual: (attack - control) / (1 - control)
            a, c = r["attack_rate"], r["control_rate"]
            assert r["residual"] == pytest.approx((a - c) / (1 - c))
            assert r["risk"] == pytest.approx(max(r["residual"], 0.0), abs=1e-9)
    assert copy["n_attacks"] == 200 and copy["secret"] == "income"


def test_bad_secret_is_named(split):
    train, control, _ = split
    with pytest.raises(ValueError, match="secret 'salary'"):
        privacy_risks(train, train, control, secret="salary")
