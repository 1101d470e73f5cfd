"""Defects a daily user meets (issue 10): each test failed before its fix."""
from tabdifflm import DiffLMSynthesizer


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


import math

import pytest

from tabdifflm.persistence import ModelFileError, read_model_file, write_model_file


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
