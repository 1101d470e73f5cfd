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
    # a predicate passed after loading holds (most of the model's rows break it: it must be enforced)
    back.set_params(constraints=back.constraints + [Predicate(lambda d: d["a"] <= 10, name="small a")])
    again = back.sample(30, random_state=1)
    assert (again.a <= 10).all() and set(zip(again.colour, again["size"])) <= seen
    assert back.last_sample_stats_["constraint_resampled_share"] > 0.3
    with pytest.raises(ValueError, match="FixedCombinations"):  # it learns from the training rows
        back.set_params(constraints=[FixedCombinations(["a", "colour"])]).sample(5)


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


@pytest.fixture(scope="module")
def pairs_df():
    """a <= b (integers, a written first), h > f (floats, f written first); some rows break each rule."""
    rng = np.random.default_rng(1)
    n = 80
    a = rng.integers(0, 21, n)
    f = np.round(rng.uniform(0, 5, n), 1)
    h = np.round(f + rng.uniform(-1, 3, n), 2)
    return pd.DataFrame({"a": a, "mid": rng.choice(["x", "y", "z"], n), "b": a + rng.integers(-4, 20, n),
                         "f": f, "h": np.where(rng.random(n) < 0.1, np.nan, h)})


PAIR_RULES = [Inequality("a", "<=", "b"), Inequality("h", ">", "f")]


@pytest.mark.parametrize("numbers", ["plain", "fixed"])
def test_inequalities_written_into_the_grammar_accept_exactly_the_rows_that_keep_them(pairs_df, smol_tokenizer,
                                                                                     numbers):
    """The linked grammar holds both rules: a training row can be written in it iff it keeps them, rows
    walked on its compiled tables alone all keep them, and the latent groups are the full grammar's."""
    import torch

    from tabdifflm.conditions import link_inequalities
    from tabdifflm.grammar import RowGrammar
    from tabdifflm.schema import frame_rows, infer_schema
    from tabdifflm.serialization import RowFormat

    schema = infer_schema(pairs_df)
    g = RowGrammar(RowFormat("values", schema, numbers), smol_tokenizer)
    linked, held = link_inequalities(g, PAIR_RULES, smol_tokenizer)
    assert held == PAIR_RULES and linked.vocab.tolist() == g.vocab.tolist()
    rows = frame_rows(pairs_df, schema)
    keeps = Inequality("a", "<=", "b").holds(pairs_df) & Inequality("h", ">", "f").holds(pairs_df)
    assert keeps.any() and not keeps.all()
    for row, ok in zip(rows, keeps):
        try:
            _, st = linked.encode(row)
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == ok, row
        if ok:
            assert [linked.group_of(s) for s in st] == [g.group_of(s) for s in g.encode(row)[1]]
    tb = linked.tables
    gen = torch.Generator().manual_seed(0)
    state, toks = torch.full((256,), tb.start), [[] for _ in range(256)]
    for _ in range(tb.max_tokens):
        m = tb.mask(torch.where(state == tb.done, tb.start, state)).float()
        tok = torch.where(tb.forced[state] >= 0, tb.forced[state], torch.multinomial(m, 1, generator=gen).squeeze(1))
        for b in (state != tb.done).nonzero().flatten().tolist():
            toks[b].append(int(tb.vocab[tok[b]]))
        state = tb.step(state, tok)
    assert (state == tb.done).all()
    walked = pd.DataFrame([linked.decode(t) for t in toks], columns=schema.names)
    assert (walked.a <= walked.b).all() and ((walked.h > walked.f) | walked.h.isna()).all()
    assert (walked.a == walked.b).any()  # the bound itself stays reachable


def test_inequalities_the_grammar_cannot_hold_are_left_out(pairs_df, smol_tokenizer):
    from tabdifflm.conditions import link_inequalities, parse_conditions, restrict
    from tabdifflm.grammar import RowGrammar
    from tabdifflm.schema import infer_schema
    from tabdifflm.serialization import RowFormat

    df = pairs_df.assign(f=pairs_df.f * 1000 + np.round(np.linspace(0, 0.999, len(pairs_df)), 3))  # 5 million values
    schema = infer_schema(df)
    g = RowGrammar(RowFormat("values", schema, "plain"), smol_tokenizer)
    linked, held = link_inequalities(g, [Inequality("h", ">", "f"), Inequality("mid", "<", "a")], smol_tokenizer)
    assert held == [] and linked is g
    # conditions that leave no pair meeting the rule: an error naming it, before any sampling
    r = restrict(g, parse_conditions({"a": (15, 20), "b": (None, 10)}, schema), smol_tokenizer)
    with pytest.raises(ValueError, match=r"Inequality\('a', '<=', 'b'\)"):
        link_inequalities(r, [Inequality("a", "<=", "b")], smol_tokenizer)


def test_an_inequality_in_the_grammar_needs_no_resampling(tiny_kwargs, ruled_df):
    s = DiffLMSynthesizer(**{**tiny_kwargs, "constraints": [Inequality("a", "<=", "b")]}).fit(ruled_df)
    out = s.sample(40, random_state=0)
    assert (out.a <= out.b).all()
    stats = s.last_sample_stats_
    assert stats["constraints_in_grammar"] == ["Inequality('a', '<=', 'b')"]
    assert stats["constraint_resampled_share"] == 0.0
    with_cond = s.sample(20, random_state=1, conditions={"b": (None, 20)})
    assert (with_cond.a <= with_cond.b).all() and (with_cond.b <= 20).all()
