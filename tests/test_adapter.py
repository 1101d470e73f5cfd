"""LoRA on the decoder (decoder_adapter="lora"): trained on a private copy, saved as the adapter alone."""
import pickle

import pandas as pd
import pytest
import torch
from safetensors import safe_open

from tabdifflm import DiffLMSynthesizer
from tabdifflm.decoder import fingerprint
from tabdifflm.synthesizer import _DECODERS


@pytest.fixture(scope="module")
def lora_fit(tiny_kwargs, mixed_df):
    # without the number head: its broad start is already the best validation checkpoint on these 40 rows, and
    # restoring it would hide whether the adapter trained
    return DiffLMSynthesizer(**tiny_kwargs, decoder_adapter="lora", lora_rank=4, lora_alpha=8,
                             number_head=0).fit(mixed_df)


def _shared(tiny_kwargs):
    return next(m for (src, *_), (m, *_r) in _DECODERS.items() if src == tiny_kwargs["decoder"])


def test_lora_trains_only_the_adapter_and_leaves_the_shared_decoder_alone(lora_fit, tiny_kwargs):
    adapter = lora_fit.decoder_adapter_
    # the adapter moved away from its zero start: it was trained
    assert any(float(layer["B"].weight.detach().abs().max()) > 0 for layer in adapter.layers.values())
    shared = _shared(tiny_kwargs)
    assert not any("lora" in n for n, _ in shared.named_parameters())  # the shared decoder has no adapter
    assert fingerprint(shared) == lora_fit.decoder_ref_["fingerprint"]
    # the copy's base weights are the shared ones, unchanged and frozen
    base = {n.replace(".base_layer", ""): p for n, p in adapter.decoder.named_parameters() if "lora" not in n}
    for n, p in shared.named_parameters():
        assert torch.equal(base[n], p) and not base[n].requires_grad
    assert all(p.requires_grad for p in adapter.parameters())


def test_lora_model_saves_only_the_adapter_and_loads_to_the_same_rows(lora_fit, tiny_kwargs, mixed_df, tmp_path):
    p = tmp_path / "lora.tdl"
    lora_fit.save(p)
    with safe_open(p, "pt") as f:
        keys = list(f.keys())
    adapter_keys = [k for k in keys if k.startswith("adapter.")]
    # the adapter's matrices only, and no decoder weight anywhere else in the file
    assert adapter_keys and all(k.endswith((".A.weight", ".B.weight")) for k in adapter_keys)
    assert not any("embed_tokens" in k or "self_attn" in k for k in keys if k not in adapter_keys)
    again = DiffLMSynthesizer.load(p)
    assert again.get_params()["decoder_adapter"] == "lora"
    pd.testing.assert_frame_equal(lora_fit.sample(6, random_state=2), again.sample(6, random_state=2))
    pickled = pickle.loads(pickle.dumps(lora_fit))  # joblib's road: the same file inside, adapter included
    pd.testing.assert_frame_equal(lora_fit.sample(6, random_state=2), pickled.sample(6, random_state=2))
    # without its adapter the same latents decode differently: the adapter is part of the model
    plain = DiffLMSynthesizer.load(p)
    plain.decoder_adapter_ = None
    plain._decoder = _shared(tiny_kwargs)
    z = lora_fit.sample_latents(8, generator=torch.Generator().manual_seed(0))
    with_lora = lora_fit.row_model()(z, *_first_rows(lora_fit, mixed_df))[0]
    without = plain.row_model()(z, *_first_rows(plain, mixed_df))[0]
    assert not torch.allclose(with_lora, without)


def _first_rows(est, df):
    from tabdifflm.schema import frame_rows
    from tabdifflm.training import pad_batch

    enc = [est._grammar.encode(r) for r in frame_rows(df.iloc[:8], est.schema_)]
    return pad_batch([t for t, _ in enc], [q for _, q in enc], est._grammar.done)


def test_lora_parameters_are_checked(tiny_kwargs, mixed_df):
    with pytest.raises(ValueError, match="decoder_adapter"):
        DiffLMSynthesizer(**tiny_kwargs, decoder_adapter="qlora").fit(mixed_df)
    with pytest.raises(ValueError, match="lora_rank"):
        DiffLMSynthesizer(**tiny_kwargs, decoder_adapter="lora", lora_rank=0).fit(mixed_df)
