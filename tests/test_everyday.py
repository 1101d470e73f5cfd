"""Defects a daily user meets (issue 10): each test failed before its fix."""
import math

import numpy as np
import pandas as pd
import pytest

from tabdifflm import DiffLMSynthesizer
from tabdifflm.persistence import ModelFileError, read_model_file, write_model_file


def test_sample_streams_latents_a_batch_at_a_time(tiny_kwargs, mixed_df):
    """Before, sample(n) drew all n latents before writing the first row."""
    s = DiffLMSynthesizer(**{**tiny_kwargs, "sample_batch_size": 8}).fit(mixed_df)
    asked = []
    draw = s.sample_latents

    def spy(n, generator=None):
        asked.append(n)
        return draw(n, generator)

    s.sample_latents = spy
    assert len(s.sample(20, random_state=0)) == 20
    assert max(asked) <= 8 and sum(asked) >= 20


def test_sampling_builds_no_autograd_graph(tiny_kwargs, mixed_df):
    """Before, sample() ran the decoder with gradients on: every token's activations were kept through the
    trainable injector (12.3 GB against 1.4 GB for 64 MAGIC rows after a one-minute fit, 3x slower)."""
    s = DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df)
    seen = []
    hook = s.row_model().decoder.base_model.register_forward_hook(
        lambda mod, args, out: seen.append(out[0].requires_grad or out[0].grad_fn is not None))
    try:
        s.sample(5, random_state=0)
    finally:
        hook.remove()
    assert seen and not any(seen)



@pytest.mark.parametrize("kwargs, names", [
    ({"decoder_dtype": "float64"}, "decoder_dtype"),  # was a KeyError deep in fit
    ({"temperature": math.nan}, "temperature"),        # was accepted, then sampling failed
    ({"max_time": "10"}, "max_time"),                  # was a bare TypeError
    ({"temperature": "hot"}, "temperature"),
    ({"diffusion_train_steps": 0}, "diffusion_train_steps"),  # was accepted silently
    ({"latent_head": "yes"}, "latent_head"),
    ({"max_time": math.inf}, "max_time"),
    ({"validation_size": 0.7}, "validation_size"),
    ({"device": "gpu0"}, "device"),
    ({"diffusion_sigma_min": "high"}, "diffusion_sigma_min"),
    ({"diffusion_sigma_min": 0}, "diffusion_sigma_min"),
    ({"diffusion_sigma_min": math.nan}, "diffusion_sigma_min"),
])
def test_every_parameter_is_checked_and_the_error_names_it(kwargs, names, mixed_df):
    with pytest.raises(ValueError, match=names):
        DiffLMSynthesizer(**kwargs).fit(mixed_df)


def test_cuda_without_cuda_is_a_clear_error_before_any_loading(mixed_df):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        DiffLMSynthesizer(device="cuda").fit(mixed_df)


def test_a_parameter_set_after_fit_is_checked_before_sampling(tiny_kwargs, mixed_df):
    s = DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df)
    s.set_params(temperature=math.nan)
    with pytest.raises(ValueError, match="temperature"):
        s.sample(3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_kwargs, mixed_df):
    p = tmp_path_factory.mktemp("damaged") / "ok.tdl"
    DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df).save(p)
    return p


def _damage(src, dst, edit_meta=None, edit_header=None, drop_tensor=None):
    from safetensors import safe_open
    from safetensors.torch import save_file
    tensors, meta = read_model_file(src)
    if edit_meta:
        edit_meta(meta)
    if drop_tensor:
        del tensors[drop_tensor]
    write_model_file(dst, tensors, meta)
    if edit_header:  # raw header strings (not JSON-encoded by write_model_file)
        with safe_open(str(dst), framework="pt") as f:
            header = dict(f.metadata())
        edit_header(header)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst), metadata=header)


@pytest.mark.parametrize("case, kw, names", [
    ("no decoder_ref", {"edit_meta": lambda m: m.pop("decoder_ref")}, "decoder_ref"),
    ("version abc", {"edit_header": lambda h: h.update(format_version="abc")}, "format_version"),
    ("params not JSON", {"edit_header": lambda h: h.update(params="{not json")}, "params"),
    ("schema damaged", {"edit_meta": lambda m: m.update(schema={"columns": [{"name": "a"}]})}, "header is damaged"),
    ("no latent_mean", {"drop_tensor": "latent_mean"}, "latent_mean"),
    ("params impossible", {"edit_meta": lambda m: m["params"].update(latent_dim=-1)}, "latent_dim"),
])
def test_a_damaged_model_file_is_a_model_file_error_naming_the_problem(saved, tmp_path, case, kw, names):
    bad = tmp_path / "bad.tdl"
    _damage(saved, bad, **kw)
    with pytest.raises(ModelFileError, match=names):
        DiffLMSynthesizer.load(bad)


@pytest.mark.parametrize("rs", [None, 7])
def test_load_gives_back_the_users_random_state(tiny_kwargs, mixed_df, tmp_path, rs):
    """Before, get_params()['random_state'] after load was the seed drawn at fit time."""
    s = DiffLMSynthesizer(**{**tiny_kwargs, "random_state": rs, "max_epochs": 1}).fit(mixed_df)
    s.save(tmp_path / "m.tdl")
    again = DiffLMSynthesizer.load(tmp_path / "m.tdl")
    assert again.get_params()["random_state"] == rs and again.seed_ == s.seed_


def test_saved_file_follows_the_umask_and_a_missing_folder_is_named(saved, tmp_path):
    import os
    import stat

    from tabdifflm.persistence import read_model_file, write_model_file
    tensors, meta = read_model_file(saved)
    old = os.umask(0o022)
    try:
        write_model_file(tmp_path / "m.tdl", tensors, meta)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.tdl").stat().st_mode) == 0o644  # was 0600 whatever the umask
    with pytest.raises(FileNotFoundError, match="folder .*nowhere does not exist"):
        write_model_file(tmp_path / "nowhere" / "m.tdl", tensors, meta)


def test_verbose_false_is_silent(tiny_kwargs, mixed_df, capfd, tmp_path):
    """Before, transformers' "Loading weights" bars and a deprecation warning printed on every fit."""
    from tabdifflm import synthesizer
    synthesizer._DECODERS.clear()  # load the decoder again, as a fresh process would
    s = DiffLMSynthesizer(**{**tiny_kwargs, "verbose": False}).fit(mixed_df)
    s.sample(3)
    s.save(tmp_path / "m.tdl")
    DiffLMSynthesizer.load(tmp_path / "m.tdl").sample(2)
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""


def test_obscure_loading_errors_name_the_problem(tiny_kwargs, tiny_encoder_dir, mixed_df, tmp_path, saved):
    # an encoder folder given as the decoder: was "empty literal after column 5"
    with pytest.raises(ValueError, match="text encoder, not a causal language model"):
        DiffLMSynthesizer.load(saved, decoder=tiny_encoder_dir)
    # a missing folder: was "Repo id must be in the form 'repo_name'"
    with pytest.raises(FileNotFoundError, match="decoder folder .*missing does not exist"):
        DiffLMSynthesizer(**{**tiny_kwargs, "decoder": str(tmp_path / "missing")}).fit(mixed_df)
    with pytest.raises(FileNotFoundError, match="encoder folder .*missing does not exist"):
        DiffLMSynthesizer(**{**tiny_kwargs, "encoder": str(tmp_path / "missing")}).fit(mixed_df)


def test_n_jobs_sets_torch_threads_for_the_call_only(tiny_kwargs, mixed_df):
    import torch

    import tabdifflm.training as training
    seen = []
    orig = training.train_diffusion

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return orig(*a, **k)

    before = torch.get_num_threads()
    training.train_diffusion, saved_fn = spy, training.train_diffusion
    import tabdifflm.synthesizer as synth_mod
    synth_mod.train_diffusion, saved_synth = spy, synth_mod.train_diffusion
    try:
        DiffLMSynthesizer(**{**tiny_kwargs, "n_jobs": 1}).fit(mixed_df)
    finally:
        training.train_diffusion, synth_mod.train_diffusion = saved_fn, saved_synth
    assert seen == [1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n_jobs"):
        DiffLMSynthesizer(n_jobs=0).fit(mixed_df)


def test_integers_beyond_2_53_stay_exact_and_in_range(tiny_kwargs):
    """Before, training values around 2**60 came back as exactly 2**60, below the training minimum."""
    import numpy as np
    import pandas as pd

    from tabdifflm.grammar import RowGrammar
    from tabdifflm.schema import build_frame, frame_rows, infer_schema
    from tabdifflm.serialization import RowFormat
    base = 2 ** 60 + 12345
    df = pd.DataFrame({"id": np.array([base + 7 * i for i in range(30)], dtype="int64"),
                       "n": pd.array([None if i % 5 == 0 else base + i for i in range(30)], dtype="Int64"),
                       "c": ["a", "b"] * 15})
    schema = infer_schema(df)
    assert schema.columns[0].min == base and schema.columns[0].max == base + 7 * 29
    rows = frame_rows(df, schema)
    pd.testing.assert_frame_equal(build_frame(rows, schema), df)  # the round trip is exact
    s = DiffLMSynthesizer(**tiny_kwargs).fit(df)
    out = s.sample(20, random_state=0)
    assert out["id"].dtype == np.int64 and out["id"].between(base, base + 7 * 29).all()
    assert out["n"].dropna().between(base + 1, base + 29).all()
    # the grammar writes exactly the value it was given
    g = s._grammar
    toks, _ = g.encode(rows[3])
    assert g.decode(toks) == rows[3]


def test_tiny_floats_keep_their_digits(tiny_kwargs):
    """Before, a column of 1e-12 .. 9e-12 came back as 1e-12 only (6 decimals, then clipped)."""
    import numpy as np
    import pandas as pd

    from tabdifflm.schema import infer_schema
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(1, 9, 40), 3) * 1e-12
    df = pd.DataFrame({"x": x, "c": ["a", "b"] * 20})
    col = infer_schema(df).columns[0]
    assert col.decimals >= 15
    out = DiffLMSynthesizer(**tiny_kwargs).fit(df).sample(30, random_state=0)
    assert out["x"].nunique() > 5 and out["x"].between(x.min(), x.max()).all()


def test_dates_spread_over_the_span_and_keep_sub_seconds(tiny_kwargs):
    """Before, 57 % and 43 % of sampled dates sat on the span's two bounds, and 00:00:01.5 became 00:00:01."""
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(0)
    t = pd.Timestamp("2021-03-01") + pd.to_timedelta(rng.uniform(0, 9 * 86400, 40).round(3), unit="s")
    df = pd.DataFrame({"t": t, "c": ["a", "b"] * 20})
    # the grammar's dates as written, unscreened (the privacy filter would keep only those far from the 36 rows)
    out = DiffLMSynthesizer(**{**tiny_kwargs, "privacy_filter": None}).fit(df).sample(40, random_state=0)["t"]
    assert out.between(t.min(), t.max()).all()
    at_bounds = ((out == t.min()) | (out == t.max())).mean()
    assert at_bounds < 0.2 and out.nunique() > 20
    assert (out.dt.microsecond != 0).mean() > 0.05  # truncated sub-seconds gave 0 (a tiny random model: 0.1-0.6)


def test_a_budget_too_short_for_preparing_the_rows_is_an_error_not_an_overrun(tiny_kwargs):
    """Defect 5: with long texts, loading and preparing the rows took 53 s of a 5 s budget, then the fit went
    on. Preparation now stops at half of max_time with an error that says what the table needs."""
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])
    df = pd.DataFrame({"text": [" ".join(rng.choice(words, 300)) for _ in range(300)],
                       "x": rng.normal(size=300).round(2)})
    with pytest.raises(ValueError, match=r"max_time=0.2 s is too short for this table: .* Raise max_time"):
        DiffLMSynthesizer(**{**tiny_kwargs, "max_time": 0.2}).fit(df)


def test_encode_takes_rows_with_categories_the_fit_never_saw(tiny_kwargs, mixed_df):
    """encode() of new rows failed with a KeyError in the row features when a category was new (found when
    encoding unseen Adult rows: 'Without-pay' was not among the 2,000 training rows)."""
    s = DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df)
    rows = mixed_df.iloc[:3].copy()
    rows["city"] = rows["city"].astype(object)
    rows.loc[rows.index[0], "city"] = "Lyon"
    Z = s.encode(rows)
    assert Z.shape == (3, s.latent_mean_.shape[0]) and np.isfinite(Z).all()
    assert len(s.decode(Z, temperature=0)) == 3
