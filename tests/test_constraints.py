"""Business rules (issue 9): never broken in output; a training table that breaks one is refused."""
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from tabdifflm import DiffLMSynthesizer, FixedCombinations, Inequality, Negative, Positive, Predicate


@pytest.fixture(scope="module")
def ruled_df():
    rng = np.random.default_rng(0)
    n = 60
    a = rng.integers(0, 25, n) * 2  # even
    colour = rng.choice(["red", "blue"], n)
    size = np.where(colour == "red", "S", rng.choice(["M", "L"], n))  # red only comes in S
    return pd.DataFrame({"a": a, "b": a + rng.integers(0, 30, n), "p": np.round(rng.uniform(0.5, 9, n), 1),
                         "q": -rng.integers(1, 9, n), "colour": colour, "size": size})


RULES = [Inequality("a", "<=", "b"), Positive("p"), Negative("q"), FixedCombinations(["colour", "size"]),
         Predicate(lambda d: d["a"] % 2 == 0, name="even a", columns=["a"])]


def test_rules_are_never_broken_in_output(tiny_kwargs, ruled_df, tmp_path):
    s = DiffLMSynthesizer(**{**tiny_kwargs, "constraints": RULES}).fit(ruled_df)
    out = s.sample(40, random_state=0)
    assert len(out) == 40
    assert (out.a <= out.b).all() and (out.p > 0).all() and (out.q < 0).all() and (out.a % 2 == 0).all()
    seen = set(zip(ruled_df.colour, ruled_df["size"]))
    assert set(zip(out.colour, out["size"])) <= seen
    stats = s.last_sample_stats_
    # the tiny model breaks the rules it is not built for: those rows were written again, and counted
    assert stats["constraint_resampled_share"] > 0 and stats["invalid_by_reason"]["constraints"] > 0
    assert clone(s).get_params()["constraints"] == s.get_params()["constraints"]
    with pytest.warns(UserWarning, match="Predicate"):
        s.save(tmp_path / "m.tdl")
    back = DiffLMSynthesizer.load(tmp_path / "m.tdl")
    assert [c.describe() for c in back.constraints] == [c.describe() for c in RULES[:4]]
    assert back.constraints_[3].allowed == s.constraints_[3].allowed  # learnt combinations kept
    again = back.sample(30, random_state=1)
    assert set(zip(again.colour, again["size"])) <= seen and (again.a <= again.b).all()


def test_sign_rules_are_written_into_the_grammar(tiny_kwargs, ruled_df):
    """A sign rule on a column without missing values narrows the column's range: nothing is resampled."""
    df = ruled_df.assign(p=ruled_df.p - 3)  # p spans zero now; keep only rows that keep the rule
    df = df[df.p > 0].reset_index(drop=True)
    s = DiffLMSynthesizer(**{**tiny_kwargs, "constraints": [Positive("p"), Negative("q")]}).fit(df)
    out = s.sample(30, random_state=0)
    assert (out.p > 0).all() and (out.q < 0).all()
    assert s.last_sample_stats_["constraint_resampled_share"] == 0.0


@pytest.mark.parametrize("rule, names", [
    (Positive("q"), ["Positive('q'", "60 rows"]),
    (Inequality("b", "<", "a"), ["Inequality('b', '<', 'a')", "rows"]),
    (Predicate(lambda d: d["a"] > 10, name="big a"), ["big a", "rows"]),
    (Positive("nope"), ["nope", "not in the table"]),
])
def test_a_training_table_that_breaks_a_rule_is_refused_naming_the_rows(tiny_kwargs, ruled_df, rule, names):
    with pytest.raises(ValueError) as e:
        DiffLMSynthesizer(**{**tiny_kwargs, "constraints": [rule]}).fit(ruled_df)
    for n in names:
        assert n in str(e.value)


def test_bad_rule_arguments():
    with pytest.raises(ValueError, match="operator"):
        Inequality("a", "=<", "b")
    with pytest.raises(ValueError, match="two or more"):
        FixedCombinations(["a"])
    with pytest.raises(TypeError, match="function"):
        Predicate("a > 1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="Constraint objects"):
            DiffLMSynthesizer(constraints=["a <= b"]).fit(pd.DataFrame({"a": range(20), "b": range(20)}))
