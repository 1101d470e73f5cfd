"""The GReaT baseline: its LLM folder, its row validation, its time budget and its sampling bookkeeping."""
import time

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("be_great")

from benchmarks.baselines.great import GReaTBaseline, clean_rows, great_llm_dir  # noqa: E402


def test_llm_dir_pads_with_a_token_great_strips(tiny_decoder_dir):
    from pathlib import Path

    from transformers import AutoTokenizer

    d = Path(great_llm_dir(tiny_decoder_dir))
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    weights = next(d.glob("*.safetensors"))
    assert weights.is_symlink()  # linked, not copied
    assert great_llm_dir(tiny_decoder_dir) == str(d)  # built once


def test_clean_rows_keeps_only_valid_rows_in_training_dtypes():
    train = pd.DataFrame({"age": [30, 40], "job": ["a", "b"], "x": [0.5, np.nan]})
    gen = pd.DataFrame({"age": ["31", "x1", "33", "34", "35.6"],
                        "job": ["a", "b", "zzz", None, "b"],
                        "x": ["1.5", None, "2", "3", "bad"]})
    out = clean_rows(gen, train)
    # row 1: age not a number; row 2: unseen category; row 3: job missing; row 4: x not a number
    assert out.to_dict("list") == {"age": [31], "job": ["a"], "x": [1.5]}
    assert (out.dtypes == train.dtypes).all()
    gen2 = pd.DataFrame({"age": ["35.6"], "job": ["b"], "x": [None]})
    out2 = clean_rows(gen2, train)
    assert out2["age"].tolist() == [36] and out2["x"].isna().all()  # missing allowed where training had it


def test_fit_stops_at_budget_and_sample_counts_every_text(tiny_decoder_dir, adult_small):
    train = adult_small.iloc[:60, :5].reset_index(drop=True)
    g = GReaTBaseline(seed=0, decoder=tiny_decoder_dir, sample_batch=4)
    t = time.monotonic()
    g.fit(train, budget_s=4)
    assert time.monotonic() - t < 60 and g.steps_ >= 1 and g.max_length_ > 10
    # Real generation from the random tiny model: whatever it writes, output rows are valid for train.
    out = g.sample(5, budget_s=3)
    assert list(out.columns) == list(train.columns) and len(out) <= 5 and g.texts_generated_ >= 4
    assert (out.dtypes == train.dtypes).all()
    # Scripted generation: 3 of every 4 texts are good rows, so the first-try share is 0.75 and rows are exact.
    tok = g.model_.tokenizer
    texts = [", ".join(f"{c} is {v}" for c, v in r.items()) for r in train.to_dict("records")]

    def scripted(input_ids, **kw):
        batch = [texts[i % len(texts)] if i % 4 else "garbage" for i in range(input_ids.shape[0])]
        return torch.tensor(tok(batch, padding=True)["input_ids"])

    g.model_.model.generate = scripted
    out = g.sample(12, budget_s=30)
    assert len(out) == 12 and g.first_try_valid_share_ == pytest.approx(0.75)
    # each generate call writes batch texts 0..3 again, so four calls give rows 1, 2, 3 four times
    expected = pd.DataFrame([train.iloc[i] for i in [1, 2, 3] * 4]).reset_index(drop=True)
    pd.testing.assert_frame_equal(out, expected.iloc[:12].astype(train.dtypes), check_dtype=True)
