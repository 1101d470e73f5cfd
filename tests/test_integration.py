"""The real default models (packaged MiniLM encoder and SmolLM2 decoder) on a little Adult data."""
import pandas as pd
import pytest
import torch

from tabdifflm import DiffLMSynthesizer

pytestmark = pytest.mark.integration


def test_defaults_fit_sample_save_load(adult_small, tmp_path):
    df = adult_small.iloc[:48]
    # the checks after fit write rows with the real decoder: fewer of them than the defaults (200, 1,000)
    s = DiffLMSynthesizer(random_state=0, max_epochs=1, eval_every=2, batch_size=8, diffusion_train_steps=50,
                          diffusion_steps=10, marginal_rows=128, privacy_sample=24, verbose=False)
    s.fit(df)
    assert s.decoder_ref_["decoder"] == "packaged:smollm2" and len(s.decoder_ref_["fingerprint"]) == 64
    hist = s.history_["vae"]
    assert hist[-1]["step"] == 6 and all(h["val_nll"] > 0 for h in hist)  # 43 training rows: 6 batches
    out = s.sample(12)
    assert len(out) == 12 and list(out.columns) == list(df.columns) and (out.dtypes == df.dtypes).all()
    for c in df.columns:
        if df[c].dtype == object:
            assert set(out[c]) <= set(df[c])
        else:
            assert df[c].min() <= out[c].min() and out[c].max() <= df[c].max()
    assert s.last_sample_stats_["first_try_valid_share"] == 1.0
    s.save(tmp_path / "adult.tdl")
    again = DiffLMSynthesizer.load(tmp_path / "adult.tdl")
    pd.testing.assert_frame_equal(s.sample(4, random_state=9), again.sample(4, random_state=9))


def test_packaged_decoder_is_frozen_and_cached(tmp_path):
    from tabdifflm.decoder import load_decoder, resolve_decoder

    path = resolve_decoder(None)  # converted once, then read from the cache
    model, tok, src = load_decoder(None, torch.bfloat16, torch.device("cpu"))
    assert src == path and all(not p.requires_grad for p in model.parameters())
    assert model.config.hidden_size == 576 and len(tok) == 49152
