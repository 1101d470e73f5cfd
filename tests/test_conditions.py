"""Conditions on any column (issue 9): every returned row meets them; bad conditions are refused first."""
import numpy as np
import pandas as pd
import pytest

from tabdifflm import DiffLMSynthesizer
from tabdifflm.conditions import parse_conditions, restrict
from tabdifflm.grammar import RowGrammar
from tabdifflm.schema import frame_rows, infer_schema
from tabdifflm.serialization import RowFormat


@pytest.fixture(scope="module")
def fitted(tiny_kwargs, mixed_df):
    return DiffLMSynthesizer(**{**tiny_kwargs, "sample_batch_size": 16}).fit(mixed_df)


@pytest.mark.parametrize("conditions, check", [
    ({"city": "Paris"}, lambda d: (d.city == "Paris").all()),
    ({"city": ["Paris", 'the "Big" one']}, lambda d: d.city.isin(["Paris", 'the "Big" one']).all()),
    ({"age": (40, None)}, lambda d: (d.age >= 40).all()),
    ({"age": (30, 35), "member": True}, lambda d: d.age.between(30, 35).all() and d.member.all()),
    ({"income": (40000.5, 52000.25)}, lambda d: d.income.between(40000.5, 52000.25).all()),
    ({"temp": (None, -2.5)}, lambda d: (d.temp <= -2.5).all() and d.temp.notna().all()),
    ({"score": [-5, 4]}, lambda d: d.score.isin([-5, 4]).all()),
    ({"score": [None]}, lambda d: d.score.isna().all()),
    ({"note": None}, lambda d: d.note.isna().all()),
    ({"joined": ("2021-01-01", "2021-06-30")},
     lambda d: d.joined.between(pd.Timestamp("2021-01-01"), pd.Timestamp("2021-06-30")).all()),
    ({"tier": "gold", "city": "São Paulo"}, lambda d: (d.tier == "gold").all() and (d.city == "São Paulo").all()),
])
def test_every_row_meets_the_conditions(fitted, mixed_df, conditions, check):
    out = fitted.sample(24, random_state=0, conditions=conditions)
    assert len(out) == 24 and list(out.columns) == list(mixed_df.columns)
    assert list(out.dtypes) == list(mixed_df.dtypes)
    assert check(out)
    stats = fitted.last_sample_stats_
    assert stats["first_try_valid_share"] == 1.0 and 0.0 <= stats["condition_share_in_prior"] <= 1.0


def test_an_exact_float_value_and_a_date_value(fitted, mixed_df):
    v = float(mixed_df.income.iloc[3])
    d = mixed_df.joined.iloc[5]
    out = fitted.sample(8, random_state=1, conditions={"income": v, "joined": d})
    assert (out.income == v).all() and (out.joined == d).all()


@pytest.mark.parametrize("conditions, names", [
    ({"town": "Paris"}, ["town", "unknown column"]),
    ({"city": "Lyon"}, ["city", "Lyon", "never seen"]),
    ({"age": (90, 120)}, ["age", "holds no value", "training range"]),
    ({"age": (50, 40)}, ["age", "holds no value"]),
    ({"age": 200}, ["age", "outside the training range"]),
    ({"age": 33.5}, ["age", "not an integer"]),
    ({"income": 50000.123}, ["income", "decimals"]),
    ({"city": []}, ["city", "empty"]),
    ({"city": ("Paris", "Lyon")}, ["city", "Lyon"]),
    ({"age": ("a", None)}, ["age", "not a number"]),
    ({"age": None}, ["age", "no missing values"]),
    ({"joined": ("1990-01-01", "1991-01-01")}, ["joined", "holds no value"]),
    ({"joined": "not a date"}, ["joined", "not a date"]),
])
def test_bad_conditions_are_refused_before_any_work_and_named(fitted, conditions, names):
    draws = []
    fitted.sample_latents, orig = (lambda n, generator=None: draws.append(n)), fitted.sample_latents
    try:
        with pytest.raises(ValueError) as e:
            fitted.sample(5, conditions=conditions)
    finally:
        del fitted.sample_latents
    assert not draws  # nothing was drawn or generated
    for name in names:
        assert name in str(e.value)


def test_conditions_must_be_a_dict(fitted):
    with pytest.raises(TypeError, match="dict"):
        fitted.sample(3, conditions=[("city", "Paris")])


def test_restricted_grammar_accepts_exactly_the_allowed_rows(mixed_df, smol_tokenizer):
    """Every training row is accepted by the narrowed grammar iff it meets the conditions, and the
    narrowed grammar keeps the full grammar's vocabulary and latent groups."""
    schema = infer_schema(mixed_df)
    g = RowGrammar(RowFormat("values", schema, "fixed"), smol_tokenizer)
    conds = parse_conditions({"age": (30, 60), "city": ["Paris", "New York, NY"], "temp": (-4.0, None)}, schema)
    r = restrict(g, conds, smol_tokenizer)
    assert r.vocab.tolist() == g.vocab.tolist() and r.n_groups == g.n_groups
    rows = frame_rows(mixed_df, schema)
    accepted = []
    for row in rows:
        try:
            r.encode(row)
            accepted.append(True)
        except ValueError:
            accepted.append(False)
    meets = [all(c.holds(row[c.column], schema.columns[c.column]) for c in conds) for row in rows]
    assert accepted == meets and any(meets) and not all(meets)
    # the latent group of each value position is the same in both grammars
    row = rows[int(np.argmax(meets))]
    _, s_full = g.encode(row)
    _, s_narrow = r.encode(row)
    assert [g.group_of(s) for s in s_full] == [r.group_of(s) for s in s_narrow]


@pytest.fixture(scope="module")
def two_clusters(tiny_kwargs):
    """Two clusters: x small <-> label a, x large <-> label b (x is written first)."""
    rng = np.random.default_rng(0)
    n = 120
    lab = rng.choice(["a", "b"], n)
    x = np.where(lab == "a", rng.integers(0, 20, n), rng.integers(80, 100, n))
    return DiffLMSynthesizer(**{**tiny_kwargs, "max_epochs": 30, "aux_steps": 10, "learning_rate": 1e-2,
                                "diffusion_train_steps": 300, "sample_batch_size": 32}).fit(
        pd.DataFrame({"x": x, "label": lab}))


def test_condition_steers_the_other_columns(two_clusters):
    """Conditioning on the label must move x with it (the latent is steered), not just force the label
    beside an unconditional x."""
    s = two_clusters
    a = s.sample(64, random_state=0, conditions={"label": "a"})
    b = s.sample(64, random_state=0, conditions={"label": "b"})
    assert (a.label == "a").all() and (b.label == "b").all()
    assert b.x.mean() - a.x.mean() > 20  # unconditional rows would give the same x for both


def test_sample_remaining_columns_keeps_known_cells_and_fills_the_rest(fitted, mixed_df):
    known = mixed_df.iloc[:12].copy()
    known.index = [f"r{i}" for i in range(12)]
    rng = np.random.default_rng(0)
    holes = rng.random(known.shape) < 0.3
    holes[:, 0] = False  # age always known
    known = known.mask(holes)
    known = known.drop(columns=["note"])  # an absent column is filled whole
    before = known.copy()
    out = fitted.sample_remaining_columns(known, random_state=0)
    pd.testing.assert_frame_equal(known, before)  # the user's table is untouched
    assert list(out.index) == list(known.index) and list(out.columns) == list(mixed_df.columns)
    assert list(out.dtypes) == list(mixed_df.dtypes)
    for c in known.columns:
        m = known[c].notna()
        assert (out.loc[m, c] == known.loc[m, c]).all(), c  # observed cells exactly as given
    assert out.notna().all().all()  # every hole filled with a value, even in columns that had missing ones
    stats = fitted.last_sample_stats_
    assert stats["filled_cells"] == int(known.isna().sum().sum()) + len(known)
    assert stats["known_cells_not_shown"] == 0


def test_known_values_the_model_cannot_write_are_kept_but_not_shown(fitted, mixed_df):
    known = mixed_df.iloc[:3].copy()
    known["city"] = known["city"].astype(object)
    known.loc[known.index[0], "city"] = "Lyon"  # never seen in training
    known.loc[known.index[1], "age"] = 500  # outside the training range
    known.loc[known.index[2], "income"] = np.nan
    out = fitted.sample_remaining_columns(known, random_state=0)
    assert out.loc[known.index[0], "city"] == "Lyon" and out.loc[known.index[1], "age"] == 500
    assert fitted.last_sample_stats_["known_cells_not_shown"] == 2
    with pytest.raises(ValueError, match="zip"):
        fitted.sample_remaining_columns(known.assign(zip=1))


def test_prescribed_values_steer_the_columns_written_after_them(two_clusters):
    """x is written before label: with x known, the label must follow x's cluster."""
    s = two_clusters
    known = pd.DataFrame({"x": [5] * 30 + [90] * 30, "label": [None] * 60})
    out = s.sample_remaining_columns(known, random_state=0)
    assert (out.x == known.x).all()
    agree = ((out.x < 50) == (out.label == "a")).mean()
    assert agree > 0.8


def test_imputer_in_a_pipeline_and_clone(tiny_kwargs, mixed_df):
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from tabdifflm import DiffLMImputer

    imp = DiffLMImputer(**tiny_kwargs)
    assert clone(imp).get_params() == imp.get_params()
    X = mixed_df.copy()
    X.loc[X.index[::3], "income"] = np.nan
    pipe = make_pipeline(imp, FunctionTransformer(lambda d: d[["age", "income"]].to_numpy(dtype=float)))
    arr = pipe.fit_transform(X)
    assert arr.shape == (len(X), 2) and np.isfinite(arr).all()
    filled = pipe[0].transform(X)
    assert filled.income.notna().all() and (filled.age == X.age).all()
    assert list(pipe[0].get_feature_names_out()) == list(X.columns)
    with pytest.raises(ValueError, match="fitted on"):
        pipe[0].transform(X[["age", "income"]])


def test_oversampler_raises_the_minority_in_an_imblearn_pipeline(tiny_kwargs, mixed_df):
    from imblearn.pipeline import make_pipeline
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer

    from tabdifflm import DiffLMOversampler

    X = mixed_df[["age", "income", "city"]]
    y = pd.Series(np.where(np.arange(len(X)) % 5 == 0, "rare", "common"), name="label")
    ovs = DiffLMOversampler(synthesizer=DiffLMSynthesizer(**tiny_kwargs), random_state=0)
    assert clone(ovs).get_params()["sampling_strategy"] == "auto"
    X_res, y_res = ovs.fit_resample(X, y)
    assert y_res.value_counts().to_dict() == {"common": 32, "rare": 32}
    assert list(X_res.columns) == list(X.columns) and list(X_res.dtypes) == list(X.dtypes)
    pd.testing.assert_frame_equal(X_res.iloc[:len(X)], X.reset_index(drop=True))  # originals first, unchanged
    half = DiffLMOversampler(sampling_strategy=0.5, synthesizer=DiffLMSynthesizer(**tiny_kwargs), random_state=0)
    assert half.fit_resample(X, y)[1].value_counts()["rare"] == 16
    pipe = make_pipeline(
        DiffLMOversampler(sampling_strategy={"rare": 20}, synthesizer=DiffLMSynthesizer(**tiny_kwargs)),
        FunctionTransformer(lambda d: d[["age", "income"]].to_numpy(dtype=float)), LogisticRegression())
    pipe.fit(X, y)
    assert pipe[0].sampling_strategy_ == {"rare": 12} and len(pipe.predict(X)) == len(X)
    for bad, msg in [("most", "not one of"), ({"rare": 3}, "only adds rows"), ({"gone": 9}, "does not have")]:
        with pytest.raises(ValueError, match=msg):
            DiffLMOversampler(sampling_strategy=bad).fit_resample(X, y)


def test_decode_with_conditions_forces_them_and_keeps_the_latent(two_clusters):
    s = two_clusters
    rows = s.sample(40, random_state=1)
    z = s.encode(rows[rows.label == "a"])
    forced = s.decode(z, random_state=0, conditions={"label": "b"})
    assert (forced.label == "b").all() and len(forced) == len(z)
    with pytest.raises(ValueError, match="label"):
        s.decode(z, conditions={"label": "c"})


def test_neighbour_latents_lie_between_a_row_and_one_of_its_nearest():
    """source="neighbours" is SMOTE in the latent space: each new latent is on the segment from a row's
    latent to one of its k nearest (never a far row of the class)."""
    from tabdifflm import DiffLMOversampler

    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(0, 0.1, (10, 3)), rng.normal(5, 0.1, (10, 3))])  # two far groups
    new = DiffLMOversampler._between_neighbours(Z, 3, 200, np.random.RandomState(0))
    assert new.shape == (200, 3)
    d = np.linalg.norm(Z[:, None] - Z[None], axis=-1)
    for p in new:
        ok = False
        for a in range(len(Z)):
            for b in np.argsort(d[a])[1:4]:  # the 3 nearest
                u = Z[b] - Z[a]
                t = float(np.dot(p - Z[a], u) / np.dot(u, u))
                ok |= -1e-9 <= t <= 1 + 1e-9 and np.allclose(Z[a] + t * u, p, atol=1e-9)
        assert ok
    assert ((new < 1).all(axis=1) | (new > 4).all(axis=1)).all()  # never between the two groups


def test_oversampler_source_and_neighbours_are_checked_before_the_fit(tiny_kwargs):
    from tabdifflm import DiffLMOversampler

    X, y = pd.DataFrame({"x": np.arange(101)}), pd.Series(["a"] * 100 + ["b"])
    synth = DiffLMSynthesizer(**tiny_kwargs)
    for kw, msg in [({"source": "smote"}, "source"), ({"k_neighbors": 0}, "k_neighbors"),
                    ({}, "at least two rows")]:  # class b has one row
        with pytest.raises(ValueError, match=msg):
            DiffLMOversampler(synthesizer=synth, **kw).fit_resample(X, y)


def test_sample_near_and_interpolate(fitted, mixed_df):
    rows = mixed_df.iloc[[2, 7]]
    near = fitted.sample_near(rows, n=5, scale=0.3, random_state=0)
    assert len(near) == 10 and list(near.index) == [2] * 5 + [7] * 5
    assert list(near.dtypes) == list(mixed_df.dtypes)
    same = fitted.sample_near(rows, n=3, scale=0.0, temperature=0)  # no noise, greedy: the reconstruction
    rec = fitted.decode(fitted.encode(rows), temperature=0)
    pd.testing.assert_frame_equal(same.iloc[[0, 3]].reset_index(drop=True), rec)
    path = fitted.interpolate(rows.iloc[[0]], rows.iloc[[1]], steps=6)
    assert len(path) == 6
    pd.testing.assert_frame_equal(path.iloc[[0, 5]].reset_index(drop=True), rec)
    with pytest.raises(ValueError, match="scale"):
        fitted.sample_near(rows, scale=-1)
    with pytest.raises(ValueError, match="one row each"):
        fitted.interpolate(rows, rows.iloc[[0]])
