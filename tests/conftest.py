"""Fixtures: tiny randomly initialised models built from configs, with the real tokenizers of the defaults."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

# at most 2 threads, shared between pytest-xdist's workers: tiny models gain little from threads, and
# workers that each take every core slow one another down
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // _WORKERS))


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from tabdifflm.decoder import resolve_decoder

    return AutoTokenizer.from_pretrained(resolve_decoder(None))


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory, smol_tokenizer):
    """A 2-layer Llama with SmolLM2's real tokenizer and vocabulary, random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny_decoder")
    cfg = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    smol_tokenizer.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A 2-layer BERT with MiniLM's real tokenizer, random weights."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tabdifflm.encoder import resolve_encoder

    d = tmp_path_factory.mktemp("tiny_encoder")
    tok = AutoTokenizer.from_pretrained(resolve_encoder(None))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_kwargs(tiny_encoder_dir, tiny_decoder_dir):
    return dict(encoder=tiny_encoder_dir, decoder=tiny_decoder_dir, decoder_dtype="float32", latent_dim=8,
                n_soft_tokens=2, n_prefix_tokens=2, max_epochs=2, batch_size=8, eval_every=2,
                diffusion_train_steps=30, diffusion_steps=4, sample_batch_size=32, marginal_rows=128, verbose=False,
                random_state=0)


@pytest.fixture(scope="session")
def mixed_df():
    """Every kind of column the schema supports, with missing values where pandas allows them."""
    rng = np.random.default_rng(0)
    n = 40
    df = pd.DataFrame({
        "age": rng.integers(18, 80, n),
        "income": np.round(rng.normal(50_000, 15_000, n), 2),
        "score": pd.array([None if i % 7 == 0 else int(v) for i, v in enumerate(rng.integers(-5, 5, n))],
                          dtype="Int64"),
        "temp": np.where(np.arange(n) % 5 == 0, np.nan, np.round(rng.normal(-3, 4, n), 1)),
        "city": rng.choice(["Paris", "São Paulo", "New York, NY", 'the "Big" one'], n).astype(object),
        "member": rng.random(n) > 0.5,
        "tier": pd.Categorical(rng.choice(["gold", "silver"], n), categories=["bronze", "silver", "gold"],
                               ordered=True),
        "note": [None if i % 4 == 0 else v for i, v in enumerate(rng.choice(["a", "b"], n))],
        "joined": pd.to_datetime("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D"),
    })
    return df


@pytest.fixture(scope="session")
def adult_small():
    from tabdifflm.datasets import default_root

    return pd.read_csv(default_root() / "adult.csv.gz", nrows=200)
