import json
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from tabdifflm import DiffLMSynthesizer
from tabdifflm.persistence import ModelFileError


@pytest.fixture(scope="module")
def fitted(tiny_kwargs, mixed_df):
    return DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df)


def test_fit_returns_self_and_sample_matches_columns_dtypes(tiny_kwargs, mixed_df):
    s = DiffLMSynthesizer(**tiny_kwargs)
    assert s.fit(mixed_df) is s
    out = s.sample(25)
    assert len(out) == 25
    assert list(out.columns) == list(mixed_df.columns)
    assert (out.dtypes == mixed_df.dtypes).all(), (out.dtypes, mixed_df.dtypes)
    for col in ["city", "note", "member", "tier"]:
        assert set(out[col].dropna()) <= set(mixed_df[col].dropna())
    for col in ["age", "income", "temp", "score"]:
        assert out[col].min() >= mixed_df[col].min() and out[col].max() <= mixed_df[col].max()
    assert out["joined"].between(mixed_df["joined"].min(), mixed_df["joined"].max()).all()
    assert s.last_sample_stats_["valid"] == 25
    assert [h["val_nll"] for h in s.history_["vae"]]


def test_decoder_weights_never_change(tiny_kwargs, mixed_df):
    from tabdifflm.synthesizer import _get_decoder
    from tabdifflm.decoder import resolve_dtype

    dec = _get_decoder(tiny_kwargs["decoder"], torch.float32, torch.device("cpu"))[0]
    before = {k: v.clone() for k, v in dec.state_dict().items()}
    s = DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df)
    assert s._decoder is dec
    assert all(not p.requires_grad for p in dec.parameters())
    after = dec.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # while the trained parts did change
    assert s.history_["vae"][-1]["step"] > 0


def test_sklearn_conventions(tiny_kwargs, mixed_df):
    s = DiffLMSynthesizer(**tiny_kwargs)
    assert s.get_params()["injection"] == "soft_prompt"
    s.set_params(injection="kv_memory")
    assert s.injection == "kv_memory"
    c = clone(s)
    assert c.get_params() == s.get_params() and c is not s
    with pytest.raises(NotFittedError):
        s.sample(3)
    s.fit(mixed_df)
    assert s.n_features_in_ == mixed_df.shape[1]
    assert list(s.feature_names_in_) == list(mixed_df.columns)


def test_same_random_state_gives_same_samples(tiny_kwargs, mixed_df):
    a = DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df).sample(10)
    b = DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df).sample(10)
    pd.testing.assert_frame_equal(a, b)
    c = DiffLMSynthesizer(**{**tiny_kwargs, "random_state": 1}).fit(mixed_df).sample(10)
    assert not a.equals(c)


def test_successive_samples_differ_but_are_reproducible(fitted):
    a, b = fitted.sample(8), fitted.sample(8)
    assert not a.equals(b)
    pd.testing.assert_frame_equal(fitted.sample(8, random_state=3), fitted.sample(8, random_state=3))


@pytest.mark.parametrize("injection", ["soft_prompt", "kv_memory", "embedding"])
def test_every_injection_runs_end_to_end(tiny_kwargs, adult_small, injection):
    s = DiffLMSynthesizer(**{**tiny_kwargs, "injection": injection, "max_epochs": 1}).fit(adult_small.iloc[:40])
    out = s.sample(6)
    assert len(out) == 6 and list(out.columns) == list(adult_small.columns)


def test_json_format_and_gaussian_prior(tiny_kwargs, adult_small):
    s = DiffLMSynthesizer(**{**tiny_kwargs, "serialization": "json", "prior": "gaussian", "max_epochs": 1})
    out = s.fit(adult_small.iloc[:30]).sample(5)
    assert len(out) == 5 and s.denoiser_ is None


def test_save_load_roundtrip(fitted, tmp_path):
    p = tmp_path / "m.tdl"
    fitted.save(p)
    again = DiffLMSynthesizer.load(p)
    pd.testing.assert_frame_equal(fitted.sample(6, random_state=5), again.sample(6, random_state=5))
    assert again.get_params()["latent_dim"] == fitted.latent_dim
    # one safetensors file: an 8-byte header length, then a JSON header; no pickle anywhere
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"]["format"] == "tabdifflm"
    assert b"\x80\x04\x95" not in raw[:8 + n]


def test_failed_save_keeps_the_old_file(fitted, tmp_path, monkeypatch):
    p = tmp_path / "m.tdl"
    fitted.save(p)
    good = p.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        fitted.save(p)
    assert p.read_bytes() == good
    assert [f.name for f in tmp_path.iterdir()] == ["m.tdl"]  # no temporary left behind


def test_load_rejects_bad_files(fitted, tmp_path):
    with pytest.raises(ModelFileError, match="no model file"):
        DiffLMSynthesizer.load(tmp_path / "missing.tdl")
    p = tmp_path / "m.tdl"
    fitted.save(p)
    raw = p.read_bytes()
    (tmp_path / "cut.tdl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match="truncated or foreign"):
        DiffLMSynthesizer.load(tmp_path / "cut.tdl")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ModelFileError):
        DiffLMSynthesizer.load(tmp_path / "x.csv")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFileError, match="not a tabdifflm model file"):
        DiffLMSynthesizer.load(tmp_path / "other.safetensors")
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n].replace(b'"format_version":"1"', b'"format_version":"9"')
    assert len(header) == n
    (tmp_path / "future.tdl").write_bytes(raw[:8] + header + raw[8 + n:])
    with pytest.raises(ModelFileError, match="version 9"):
        DiffLMSynthesizer.load(tmp_path / "future.tdl")


def test_load_refuses_a_different_decoder(fitted, tmp_path, smol_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other_decoder"
    cfg = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(123)
    LlamaForCausalLM(cfg).save_pretrained(other)
    smol_tokenizer.save_pretrained(other)
    fitted.save(tmp_path / "m.tdl")
    with pytest.raises(ModelFileError, match="other weights"):
        DiffLMSynthesizer.load(tmp_path / "m.tdl", decoder=str(other))


@pytest.mark.parametrize("n, err", [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError),
                                    ("5", TypeError)])
def test_sample_rejects_bad_counts(fitted, n, err):
    with pytest.raises(err, match="n_samples"):
        fitted.sample(n)


def test_sample_accepts_numpy_ints(fitted):
    assert len(fitted.sample(np.int64(3))) == 3


def test_too_few_rows_and_bad_params(tiny_kwargs, mixed_df):
    with pytest.raises(ValueError, match="at least 10 rows"):
        DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df.iloc[:5])
    with pytest.raises(ValueError, match="injection"):
        DiffLMSynthesizer(**{**tiny_kwargs, "injection": "lora"}).fit(mixed_df)
    with pytest.raises(ValueError, match="latent_dim"):
        DiffLMSynthesizer(**{**tiny_kwargs, "latent_dim": 0}).fit(mixed_df)
    with pytest.raises(ValueError, match="empty"):
        DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df.iloc[:0])


def test_sample_gives_up_with_a_clear_error(fitted, monkeypatch):
    from tabdifflm.grammar import InvalidValue

    def never(toks):
        raise InvalidValue("column 'age': nope")

    monkeypatch.setattr(fitted._grammar, "decode", never)
    monkeypatch.setattr(fitted, "max_sample_attempts", 2)
    with pytest.raises(RuntimeError, match=r"only 0 of 4 rows were valid after 2 rounds.*'age'"):
        fitted.sample(4)


def test_user_frame_untouched_and_pipeline_use(tiny_kwargs, mixed_df):
    before = mixed_df.copy()
    pipe = make_pipeline(FunctionTransformer(lambda d: d.drop(columns=["note"])),
                         DiffLMSynthesizer(**{**tiny_kwargs, "max_epochs": 1}))
    pipe.fit(mixed_df)
    pd.testing.assert_frame_equal(mixed_df, before)
    out = pipe[-1].sample(4)
    assert "note" not in out.columns and len(out) == 4
