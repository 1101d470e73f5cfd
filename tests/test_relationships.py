"""The parts that make the latent carry every column: latent logit head, column-balanced loss, row features,
and the public latent API (encode, decode, column_nll) the diagnostic is built on."""
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from tabdifflm import DiffLMSynthesizer
from tabdifflm.features import RowFeaturizer
from tabdifflm.grammar import RowGrammar
from tabdifflm.injection import Injector
from tabdifflm.metrics import target_associations
from tabdifflm.model import LatentLogitHead, RowModel
from tabdifflm.numbers import NumberHead
from tabdifflm.schema import frame_rows, infer_schema
from tabdifflm.serialization import RowFormat
from tabdifflm.synthesizer import READOUT_DRAWS
from tabdifflm.training import VAEData, column_balanced_mean, pad_batch, reconstruction_nll, train_readout


@pytest.fixture(scope="module")
def tiny_decoder(tiny_decoder_dir):
    m = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir, dtype=torch.float32).eval()
    m.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def batch(adult_small, smol_tokenizer):
    s = infer_schema(adult_small)
    g = RowGrammar(RowFormat("values", s, "fixed"), smol_tokenizer)
    enc = [g.encode(r) for r in frame_rows(adult_small.iloc[:4], s)]
    return g, pad_batch([e[0] for e in enc], [e[1] for e in enc], g.done)


def test_latent_head_starts_neutral_and_gives_the_latent_a_direct_path(tiny_decoder, batch):
    g, (toks, sts, valid) = batch
    inj = Injector("soft_prompt", 6, tiny_decoder, n_soft_tokens=2, n_prefix_tokens=2)
    head = LatentLogitHead(6, g.n_groups, g.K)
    z = torch.randn(4, 6, requires_grad=True)
    plain, n = reconstruction_nll(RowModel(tiny_decoder, inj, g), z, toks, sts, valid)
    with_head, n2 = reconstruction_nll(RowModel(tiny_decoder, inj, g, head), z, toks, sts, valid)
    assert n == n2 and torch.allclose(plain, with_head)  # zero init: exactly the frozen decoder's model
    with_head.sum().backward()
    assert head.weight.grad.abs().sum() > 0 and head.bias.grad.abs().sum() > 0
    with torch.no_grad():
        head.weight.normal_()
    moved, _ = reconstruction_nll(RowModel(tiny_decoder, inj, g, head), z.detach(), toks, sts, valid)
    assert not torch.allclose(moved, plain)


def test_sampling_follows_the_latent_head(tiny_decoder, batch):
    """A head that strongly favours each group's first allowed token makes greedy rows change with z."""
    g, _ = batch
    inj = Injector("soft_prompt", 6, tiny_decoder, n_soft_tokens=2, n_prefix_tokens=2)
    head = LatentLogitHead(6, g.n_groups, g.K)
    z = torch.randn(3, 6)
    base = RowModel(tiny_decoder, inj, g).generate(z, temperature=0)
    with torch.no_grad():
        head.weight.normal_(0, 50)
    steered = RowModel(tiny_decoder, inj, g, head).generate(z, temperature=0)
    assert steered != base
    for r in steered:
        g.decode(r)  # still complete, valid rows: the grammar mask applies after the head


def test_head_alone_scores_every_choice_without_the_decoder(tiny_decoder, batch):
    g, (toks, sts, valid) = batch
    head = LatentLogitHead(6, g.n_groups, g.K)
    z = torch.randn(4, 6, requires_grad=True)
    inj = Injector("soft_prompt", 6, tiny_decoder, n_soft_tokens=2, n_prefix_tokens=2)
    model = RowModel(tiny_decoder, inj, g, head)
    nll, rows, cols = model.head_nll(z, toks, sts, valid)
    full, rows2, cols2 = model(z, toks, sts, valid)
    assert torch.equal(rows, rows2) and torch.equal(cols, cols2)  # the same choices
    # a zero head is uniform over each state's allowed tokens: NLL = log(number allowed)
    n_allowed = torch.tensor([len(a) for a in g._allowed])[sts][valid & (torch.tensor(
        [len(a) for a in g._allowed])[sts] > 1)]
    assert torch.allclose(nll, n_allowed.float().log())
    with torch.no_grad():
        head.weight.normal_()
    nll, *_ = model.head_nll(z, toks, sts, valid)
    nll.sum().backward()
    assert z.grad.abs().sum() > 0


def test_column_balanced_mean_weighs_each_cell_once():
    nll = torch.tensor([1.0, 3.0, 5.0, 7.0, 2.0])
    rows = torch.tensor([0, 0, 0, 1, 1])
    cols = torch.tensor([0, 0, 1, 0, 1])
    # cells: (0,0) mean 2, (0,1) 5, (1,0) 7, (1,1) 2 -> 4; the token mean would be 3.6
    assert float(column_balanced_mean(nll, rows, cols, 2, 2)) == pytest.approx(4.0)
    assert float(nll.mean()) == pytest.approx(3.6)


def test_choice_nll_names_row_and_column_of_every_choice(tiny_decoder, batch):
    g, (toks, sts, valid) = batch
    inj = Injector("soft_prompt", 6, tiny_decoder, n_soft_tokens=2, n_prefix_tokens=2)
    nll, rows, cols = RowModel(tiny_decoder, inj, g)(torch.zeros(4, 6), toks, sts, valid)
    assert nll.shape == rows.shape == cols.shape and (nll >= 0).all()
    assert set(rows.tolist()) == {0, 1, 2, 3} and cols.min() >= 0 and cols.max() < len(g.cols)


def test_row_features_are_quantiles_one_hots_and_missing_flags(mixed_df):
    s = infer_schema(mixed_df)
    rows = frame_rows(mixed_df, s)
    f = RowFeaturizer.fit(s, rows)
    x = f.transform(rows)
    assert x.shape == (len(rows), f.n_features) and torch.isfinite(x).all()
    age = x[:, 0].numpy()  # first column is numeric: its feature is monotone in the value
    order = np.argsort(mixed_df["age"].to_numpy(), kind="stable")
    assert np.all(np.diff(age[order]) >= 0) and age.min() >= -1 and age.max() <= 1
    again = RowFeaturizer.from_dict(s, f.to_dict()).transform(rows)
    assert torch.equal(x, again)


def test_target_associations_separate_signal_from_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    df = pd.DataFrame({"signal": x, "noise": rng.normal(size=2000), "cat": np.where(x > 0, "a", "b"),
                       "y": np.where(x + 0.3 * rng.normal(size=2000) > 0, "yes", "no")})
    a = target_associations(df, "y", "classification")
    assert a["signal"] > 0.5 and a["cat"] > 0.5 and a["noise"] < 0.1
    r = target_associations(df.assign(y=x * 2 + 1), "y", "regression")
    assert r["signal"] == pytest.approx(1.0) and r["noise"] < 0.1 and r["cat"] > 0.7


@pytest.fixture(scope="module")
def fitted(tiny_kwargs, mixed_df):
    return DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df)


def test_encode_decode_and_column_nll_are_public_and_consistent(fitted, mixed_df):
    z = fitted.encode(mixed_df.iloc[:7])
    assert z.shape == (7, fitted.latent_dim) and np.isfinite(z).all()
    back = fitted.decode(z, temperature=0, random_state=0)
    assert list(back.columns) == list(mixed_df.columns) and len(back) == 7
    pd.testing.assert_frame_equal(back, fitted.decode(z, temperature=0, random_state=1))  # greedy: no randomness
    nll = fitted.column_nll(mixed_df.iloc[:7])
    assert nll.shape == (7, mixed_df.shape[1]) and (nll.to_numpy() >= 0).all()
    assert list(nll.columns) == list(mixed_df.columns)
    other = fitted.column_nll(mixed_df.iloc[:7], np.roll(z, 1, axis=0))
    assert not np.allclose(other.to_numpy(), nll.to_numpy())  # the latent matters
    with pytest.raises(ValueError, match="shape"):
        fitted.decode(np.zeros((2, fitted.latent_dim + 1)))
    with pytest.raises(ValueError, match="lacks the training columns"):
        fitted.encode(mixed_df.drop(columns=["age"]))
    assert fitted.tokens_per_row_ > fitted.choices_per_row_ > 0


def test_relationship_parameters_are_checked_and_the_papers_model_stays_reachable(tiny_kwargs, mixed_df,
                                                                                  tmp_path):
    with pytest.raises(ValueError, match="number_format"):
        DiffLMSynthesizer(**{**tiny_kwargs, "number_format": "padded"}).fit(mixed_df)
    with pytest.raises(ValueError, match="needs serialization='values'"):
        DiffLMSynthesizer(**{**tiny_kwargs, "number_format": "fixed", "serialization": "json"}).fit(mixed_df)
    with pytest.raises(ValueError, match="column_loss"):
        DiffLMSynthesizer(**{**tiny_kwargs, "column_loss": "cell"}).fit(mixed_df)
    with pytest.raises(ValueError, match="latent_head"):
        DiffLMSynthesizer(**{**tiny_kwargs, "latent_head": "yes"}).fit(mixed_df)
    with pytest.raises(ValueError, match="aux_weight"):
        DiffLMSynthesizer(**{**tiny_kwargs, "aux_weight": -1}).fit(mixed_df)
    with pytest.raises(ValueError, match="aux_steps"):
        DiffLMSynthesizer(**{**tiny_kwargs, "aux_steps": 1.5}).fit(mixed_df)
    paper = DiffLMSynthesizer(**{**tiny_kwargs, "number_format": "plain", "latent_head": False, "aux_weight": 0,
                                 "aux_steps": 0, "row_features": False, "column_loss": "token",
                                 "max_epochs": 1}).fit(mixed_df)
    assert paper.latent_head_ is None and paper.featurizer_ is None
    p = tmp_path / "paper.tdl"
    paper.save(p)
    again = DiffLMSynthesizer.load(p)
    assert again.latent_head_ is None and again.get_params()["number_format"] == "plain"
    pd.testing.assert_frame_equal(paper.sample(5, random_state=3), again.sample(5, random_state=3))


def test_files_from_before_these_parameters_load_as_the_papers_model(tiny_kwargs, mixed_df, tmp_path):
    from tabdifflm.persistence import read_model_file, write_model_file

    old = DiffLMSynthesizer(**{**tiny_kwargs, "number_format": "plain", "latent_head": False,
                               "row_features": False, "column_loss": "token", "max_epochs": 1}).fit(mixed_df)
    p = tmp_path / "old.tdl"
    old.save(p)
    tensors, meta = read_model_file(p)
    for k in ("number_format", "latent_head", "aux_weight", "aux_steps", "row_features", "column_loss"):
        del meta["params"][k]  # as written by tabdifflm before they existed
    meta.pop("featurizer")
    write_model_file(p, tensors, meta)
    again = DiffLMSynthesizer.load(p)
    assert again.get_params()["number_format"] == "plain" and again.latent_head_ is None
    pd.testing.assert_frame_equal(old.sample(5, random_state=2), again.sample(5, random_state=2))


def test_a_time_budget_leaves_the_diffusion_prior_its_steps(tiny_kwargs, mixed_df):
    """The VAE stops early enough (its validation passes timed, the diffusion stage's time reserved) that
    the prior still trains; before, a tight budget could leave it with one step and no warning."""
    s = DiffLMSynthesizer(**{**tiny_kwargs, "max_epochs": 10_000, "max_time": 15, "diffusion_train_steps": 30})
    s.fit(mixed_df)
    assert s.history_["vae"][-1]["step"] >= 1
    # all 30 steps on an idle machine; at least half when other processes slow the stage down after it
    # was timed (before the reserve, a tight budget left the prior one step)
    assert s.history_["diffusion"][-1]["step"] >= 15
    with pytest.warns(UserWarning, match="diffusion prior"):  # a budget too small for the prior says so
        DiffLMSynthesizer(**{**tiny_kwargs, "max_epochs": 10_000, "max_time": 4,
                             "diffusion_train_steps": 100_000}).fit(mixed_df)


@pytest.mark.parametrize("method", ["soft_prompt", "kv_memory"])
def test_compiled_sampler_writes_the_rows_of_the_reference_loop(tiny_decoder, batch, method):
    """Greedy rows from the tensor-table sampler equal those of the per-row Python loop it replaced
    (kept in benchmarks.speed as the reference), on the same latents, with and without the latent head and
    its number head."""
    from benchmarks.speed import generate_reference

    g, _ = batch
    inj = Injector(method, 6, tiny_decoder, n_soft_tokens=2, n_prefix_tokens=2)
    head = LatentLogitHead(6, g.n_groups, g.K)
    with torch.no_grad():
        head.weight.normal_(0, 2)
    numbers = NumberHead(g, 6)
    with_numbers = LatentLogitHead(6, g.n_groups, g.K, numbers=numbers)
    with torch.no_grad():
        numbers.proj.weight.normal_(0, 2)
    z = torch.randn(5, 6)
    for h in (None, head, with_numbers):
        model = RowModel(tiny_decoder, inj, g, h)
        assert model.generate(z, temperature=0) == generate_reference(model, z, temperature=0)


@pytest.mark.parametrize("method", ["soft_prompt", "kv_memory"])
def test_static_cache_writes_the_same_greedy_rows(tiny_decoder, batch, method):
    """generate(static_cache=True) only changes where keys and values are kept, not the rows."""
    g, _ = batch
    inj = Injector(method, 6, tiny_decoder, n_soft_tokens=2, n_prefix_tokens=2)
    model = RowModel(tiny_decoder, inj, g)
    z = torch.randn(4, 6)
    assert model.generate(z, temperature=0, static_cache=True) == model.generate(z, temperature=0)


def test_row_vae_computes_the_whole_loss_in_one_forward(tiny_kwargs, mixed_df):
    """RowVAE.forward = column-balanced CE + aux_weight x head CE + beta x KL; its NLL per row matches the
    public column_nll at the posterior means; a heads-only step leaves the backbone without gradients."""
    from tabdifflm.model import RowVAE
    from tabdifflm.serialization import encoder_text
    from tabdifflm.training import VAEData

    s = DiffLMSynthesizer(**{**tiny_kwargs, "column_loss": "column", "aux_weight": 0.5}).fit(mixed_df)
    part = mixed_df.iloc[:6]
    rows = frame_rows(part, s.schema_)
    g = s.row_model()
    vae = RowVAE(s.encoder_, g, column_loss="column", aux_weight=0.5)
    toks, states = zip(*(g.automaton.encode(r) for r in rows))
    data = VAEData(s._enc_tok, [encoder_text(s.schema_, r) for r in rows], list(toks), list(states),
                   g.grammar.done, features=s.featurizer_.transform(rows) if s.featurizer_ else None)
    batch = data.batch(range(6))
    eps = torch.zeros(6, s.latent_dim)
    out = vae(*batch, eps, beta=0.3)
    expected = s.column_nll(part, s.encode(part)).sum(1).to_numpy()
    np.testing.assert_allclose(out.nll.detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    z = s.encode(part)
    zt = torch.as_tensor(z, dtype=torch.float32)
    ce = column_balanced_mean(*g(zt, *batch[3:]), 6, g.grammar.n_columns)
    head = column_balanced_mean(*g.head_nll(zt, *batch[3:]), 6, g.grammar.n_columns)
    assert float(out.loss.detach()) == pytest.approx(float((ce + 0.5 * head + 0.3 * out.kl.mean()).detach()), rel=1e-4)
    vae.zero_grad()
    vae(*batch, torch.randn(6, s.latent_dim), beta=0.3, heads_only=True).loss.backward()
    assert all(p.grad is None for p in s.encoder_.backbone.parameters())
    assert s.encoder_.head.weight.grad.abs().sum() > 0 and g.latent_head.weight.grad.abs().sum() > 0


def test_hidden_latent_head_starts_neutral_trains_and_round_trips(tiny_kwargs, mixed_df, tmp_path):
    head = LatentLogitHead(6, 3, 5, hidden=8, context=True)
    z = torch.randn(4, 6)
    rows, groups, prev = torch.tensor([0, 1, 2, 3, 3]), torch.tensor([0, 2, 1, 1, 1]), torch.tensor([5, 0, 4, 1, 2])
    logits = head.choice_logits(head(z), rows, groups, prev)
    assert torch.equal(logits, torch.zeros(5, 5))  # zero output layers: the frozen decoder's model
    (logits * torch.randn(5, 5)).sum().backward()  # gradients reach the output layer
    assert head.out.weight.grad.abs().sum() > 0
    with torch.no_grad():
        head.out.weight.normal_()
        head.context.weight.normal_()
    logits = head.choice_logits(head(z), rows, groups, prev)
    assert not torch.allclose(logits[3], logits[4])  # same row and group, another token before: other logits
    every = head.all_logits(head(z), groups, prev)  # [4 rows, 5 choices, 5 tokens]
    torch.testing.assert_close(every[rows, torch.arange(5)], logits)
    s = DiffLMSynthesizer(**{**tiny_kwargs, "latent_head_hidden": 8, "latent_head_context": True}).fit(mixed_df)
    assert s.latent_head_.out.weight.abs().sum() > 0  # trained away from zero
    assert s.latent_head_.context.weight.abs().sum() > 0
    s.save(tmp_path / "m.tdl")
    back = DiffLMSynthesizer.load(tmp_path / "m.tdl")
    assert back.latent_head_hidden == 8 and back.latent_head_context
    pd.testing.assert_frame_equal(s.sample(6, random_state=1), back.sample(6, random_state=1))


def test_read_out_starts_neutral_and_dropped_rows_ignore_the_latent(tiny_decoder, batch):
    """A fresh read-out adds nothing; it is trained through the decoder's NLL; a row dropped by latent
    dropout is scored without the latent head's logits (its NLL does not move with them), the others with."""
    g, (toks, sts, valid) = batch
    inj = Injector("soft_prompt", 6, tiny_decoder, n_soft_tokens=2, n_prefix_tokens=2)
    plain = LatentLogitHead(6, g.n_groups, g.K)
    read = LatentLogitHead(6, g.n_groups, g.K, read_dim=32, read_width=4)
    read.load_state_dict({**plain.state_dict(), **{k: v for k, v in read.state_dict().items() if "reader" in k}})
    z = torch.randn(4, 6)
    a, _ = reconstruction_nll(RowModel(tiny_decoder, inj, g, plain), z, toks, sts, valid)
    model = RowModel(tiny_decoder, inj, g, read)
    b, _ = reconstruction_nll(model, z, toks, sts, valid)
    torch.testing.assert_close(a, b)
    b.sum().backward()
    assert read.reader[-1].weight.grad.abs().sum() > 0
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def per_row():
        nll, rows, _ = model(z, toks, sts, valid, keep)
        return torch.zeros(4).index_add(0, rows, nll.detach())

    before = per_row()
    with torch.no_grad():
        read.weight.normal_(0, 5)
    after = per_row()
    assert torch.equal(before[[1, 3]], after[[1, 3]]) and not torch.allclose(before[[0, 2]], after[[0, 2]])


def test_read_out_learns_a_column_from_the_columns_written_before_it(tiny_decoder, smol_tokenizer):
    """b copies a. With the latent dropped for every row, the latent head cannot help, so only the read-out
    of the decoder's hidden state (which has read a) can make greedy rows with b = a: before training about
    half are, after it (nearly) all."""
    df = pd.DataFrame({"a": ["red", "blue"] * 32, "b": ["red", "blue"] * 32, "c": ["x", "y", "y", "x"] * 16})
    s = infer_schema(df)
    g = RowGrammar(RowFormat("values", s, "fixed"), smol_tokenizer)
    enc = [g.encode(r) for r in frame_rows(df, s)]
    toks, sts, valid = pad_batch([e[0] for e in enc], [e[1] for e in enc], g.done)
    inj = Injector("soft_prompt", 6, tiny_decoder, n_soft_tokens=2, n_prefix_tokens=2)
    torch.manual_seed(0)
    head = LatentLogitHead(6, g.n_groups, g.K, read_dim=32, read_width=8)
    model = RowModel(tiny_decoder, inj, g, head)
    z, keep = torch.zeros(64, 6), torch.zeros(64)

    def agree():
        gen = torch.Generator().manual_seed(0)
        rows = [g.decode(r) for r in model.generate(torch.randn(200, 6, generator=gen), generator=gen)]
        return np.mean([r[0] == r[1] for r in rows])

    start = agree()
    opt = torch.optim.Adam(head.reader.parameters(), lr=0.05)
    for _ in range(60):
        nll, _, _ = model(z, toks, sts, valid, keep)
        opt.zero_grad()
        nll.mean().backward()
        opt.step()
    assert start < 0.75 and agree() > 0.95


def test_latent_read_out_is_a_parameter_that_fits_round_trips_and_is_left_out_under_dp(tiny_kwargs, mixed_df,
                                                                                       tmp_path):
    rng = np.random.default_rng(0)  # a table the tiny model learns (its best validation state is not the first)
    df = pd.DataFrame({"age": rng.integers(18, 80, 40), "city": rng.choice(["a", "b"], 40)})
    s = DiffLMSynthesizer(**{**tiny_kwargs, "latent_readout": 4, "latent_dropout": 0.5}).fit(df)
    assert s.latent_head_.reader[-1].weight.abs().sum() > 0  # trained away from zero
    assert s.history_["readout"] == [] and "validation rows" in s.history_["stopped"]["readout"]  # 4: too few
    s.save(tmp_path / "m.tdl")
    back = DiffLMSynthesizer.load(tmp_path / "m.tdl")
    assert back.latent_readout == 4 and back.latent_dropout == 0.5
    pd.testing.assert_frame_equal(s.sample(6, random_state=1), back.sample(6, random_state=1))
    with pytest.raises(ValueError, match="latent_dropout"):
        DiffLMSynthesizer(**{**tiny_kwargs, "latent_dropout": 1.0}).fit(mixed_df)
    private = DiffLMSynthesizer(**{**tiny_kwargs, "latent_readout": 4, "dp_epsilon": 3.0,
                                   "max_epochs": 1}).fit(mixed_df)
    assert private.latent_head_.reader is None and "readout" not in private.history_


def test_version_0_16_linear_read_out_still_loads(tiny_kwargs, tmp_path):
    """0.16 saved a rank-r linear read-out (reader.0 without bias, reader.1); loading rebuilds that shape
    and writes the same rows."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age": rng.integers(18, 80, 40), "city": rng.choice(["a", "b"], 40)})
    s = DiffLMSynthesizer(**{**tiny_kwargs, "latent_readout": 4, "latent_dropout": 0.5}).fit(df)
    head = s.latent_head_
    head.reader = LatentLogitHead.make_reader(head.reader[0].in_features, 4, head.reader[-1].out_features, linear=True)
    with torch.no_grad():
        for p in head.reader.parameters():
            p.normal_(0, 0.5)
    s.save(tmp_path / "old.tdl")
    back = DiffLMSynthesizer.load(tmp_path / "old.tdl")
    assert len(back.latent_head_.reader) == 2 and back.latent_head_.reader[0].bias is None
    pd.testing.assert_frame_equal(s.sample(6, random_state=1), back.sample(6, random_state=1))


def _copied_column_model(tiny_decoder, smol_tokenizer):
    """A tiny row model, its grammar and 72 rows whose column b copies a (c is noise)."""
    df = pd.DataFrame({"a": ["red", "blue", "green"] * 24, "b": ["red", "blue", "green"] * 24,
                       "c": ["x", "y", "y", "x"] * 18})
    s = infer_schema(df)
    g = RowGrammar(RowFormat("values", s, "fixed"), smol_tokenizer)
    enc = [g.encode(r) for r in frame_rows(df, s)]
    data = VAEData(smol_tokenizer, ["x"] * len(enc), [e[0] for e in enc], [e[1] for e in enc], g.done)
    inj = Injector("soft_prompt", 6, tiny_decoder, n_soft_tokens=2, n_prefix_tokens=2)
    torch.manual_seed(0)
    model = RowModel(tiny_decoder, inj, g, LatentLogitHead(6, g.n_groups, g.K, read_dim=32, read_width=16))
    return model, g, data


def test_read_out_stage_learns_what_blended_latents_leave_open(tiny_decoder, smol_tokenizer):
    """train_readout with latents that say nothing of the row (as a far-stopped sampler's blend): b copies a,
    which only the read-out of the decoder's hidden state can carry. Its validation NLL falls from the
    start, the best epoch is kept, and greedy rows then nearly all have b = a."""
    model, g, data = _copied_column_model(tiny_decoder, smol_tokenizer)

    def agree():
        gen = torch.Generator().manual_seed(0)
        rows = [g.decode(r) for r in model.generate(torch.randn(200, 6, generator=gen), generator=gen)]
        return np.mean([r[0] == r[1] for r in rows])

    start = agree()
    gen = torch.Generator().manual_seed(0)
    hist, why = train_readout(model, data, list(range(60)), [torch.randn(60, 6, generator=gen) for _ in range(2)],
                              list(range(60, 72)), torch.randn(12, 6, generator=gen), deadline=math.inf,
                              lr=0.01, batch_size=64, generator=gen)
    assert hist[0]["epoch"] == 0 and min(h["val_nll"] for h in hist[1:]) < hist[0]["val_nll"] - 0.15
    assert why in ("validation", "epochs")
    assert start < 0.6 and agree() > 0.9  # chance: 1 in 3


def test_read_out_stage_keeps_its_start_only_where_it_was_measured_best(tiny_decoder, smol_tokenizer):
    """The read-out the VAE stage leaves is a candidate start beside no read-out: a harmful one (large random
    weights) is dropped for none, a useful one kept; with no epoch better than the start (lr 0), the
    read-out returned is the start whose validation NLL epoch 0 records, and it scores that NLL."""
    from tabdifflm.training import _choice_views
    from tabdifflm.model import choice_nll
    model, g, data = _copied_column_model(tiny_decoder, smol_tokenizer)
    gen = torch.Generator().manual_seed(0)
    train_z, val_z = [torch.randn(60, 6, generator=gen)], torch.randn(12, 6, generator=gen)

    def run(**kw):
        return train_readout(model, data, list(range(60)), train_z, list(range(60, 72)), val_z,
                             deadline=math.inf, batch_size=64, generator=torch.Generator().manual_seed(1), **kw)

    def val_nll():  # the validation NLL per choice of the read-out as it now is
        h, base, target = _choice_views(model, data, list(range(60, 72)), val_z, math.inf, tqdm(disable=True))
        with torch.no_grad():
            return float(choice_nll(base + model.latent_head.read(h), target).mean())

    last = model.latent_head.reader[-1]
    with torch.no_grad():
        last.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(2))
    hist, _ = run(lr=0.0, max_epochs=2)
    assert hist[0]["val_nll_vae_readout"] > hist[0]["val_nll_without"] == hist[0]["val_nll"]
    assert last.weight.abs().sum() == 0 and val_nll() == pytest.approx(hist[0]["val_nll"], abs=1e-3)
    run(lr=0.01, max_epochs=40)  # a useful read-out, then the same lr-0 stage again: it stays
    trained = copy.deepcopy(model.latent_head.reader.state_dict())
    hist, _ = run(lr=0.0, max_epochs=2)
    assert hist[0]["val_nll_vae_readout"] < hist[0]["val_nll_without"] - 0.1
    assert hist[0]["val_nll"] == hist[0]["val_nll_vae_readout"] == pytest.approx(val_nll(), abs=1e-3)
    assert all(torch.equal(v, trained[k]) for k, v in model.latent_head.reader.state_dict().items())


def test_read_out_stage_holds_as_many_rows_as_its_cap_of_choices_allows(tiny_kwargs, monkeypatch):
    """The cap counts choices (not tokens, which a row has more of): with room for 60 choices, the stage keeps
    60 // (choices a row x draws) training rows."""
    import tabdifflm.synthesizer as synth
    monkeypatch.setattr(synth, "READOUT_CHOICES", 60)
    df = pd.DataFrame({"a": ["red", "blue", "green"] * 30, "b": ["red", "blue", "green"] * 30,
                       "c": ["x", "y", "y", "x", "y", "x"] * 15})
    s = DiffLMSynthesizer(**{**tiny_kwargs, "validation_size": 0.3, "max_epochs": 1}).fit(df)
    per_row = s.choices_per_row_
    assert s.tokens_per_row_ > per_row
    assert s.history_["readout"][0]["choices"] == READOUT_DRAWS * (60 // (per_row * READOUT_DRAWS)) * per_row


def test_fit_gives_the_read_out_its_stage_with_enough_validation_rows(tiny_kwargs):
    """With at least 20 validation rows the fit trains the read-out on blended latents after the prior: the
    history starts at epoch 0 (the better of the VAE stage's read-out and none) and keeps the best epoch."""
    df = pd.DataFrame({"a": ["red", "blue", "green"] * 30, "b": ["red", "blue", "green"] * 30,
                       "c": ["x", "y", "y", "x", "y", "x"] * 15})
    s = DiffLMSynthesizer(**{**tiny_kwargs, "validation_size": 0.3, "max_epochs": 1}).fit(df)
    hist = s.history_["readout"]
    assert hist[0]["epoch"] == 0 and hist[0]["choices"] > 0 and len(hist) > 1
    assert s.history_["stopped"]["readout"] in ("validation", "epochs")
    start = hist[0]  # every training row, twice (two blends each): the row cap is far off
    n_train = len(df) - 27  # validation_size 0.3 of 90 rows
    assert start["choices"] == READOUT_DRAWS * n_train * s.choices_per_row_
    assert start["val_nll"] == min(start["val_nll_vae_readout"], start["val_nll_without"])
    assert min(h["val_nll"] for h in hist) <= start["val_nll"]
    assert len(s.sample(5, random_state=0)) == 5


def test_a_time_budget_holds_back_the_read_out_stages_rows_from_the_vae(tiny_kwargs, monkeypatch):
    """Under max_time the VAE stage holds back the decoder passes of the read-out's rows (every kept training
    row once per draw, and the validation rows) at its measured rate, instead of a fixed share of the
    budget; the read-out's stage records what those passes took. Without a budget nothing is held back."""
    import tabdifflm.synthesizer as synth
    seen = []
    real = synth.train_vae

    def spy(*a, **kw):
        seen.append(kw["reserve_rows"])
        return real(*a, **kw)

    monkeypatch.setattr(synth, "train_vae", spy)
    df = pd.DataFrame({"a": ["red", "blue", "green"] * 30, "b": ["red", "blue", "green"] * 30,
                       "c": ["x", "y", "y", "x", "y", "x"] * 15})
    kw = {**tiny_kwargs, "validation_size": 0.3, "max_epochs": 1}
    s = DiffLMSynthesizer(**kw, max_time=600).fit(df)
    n_val, n_train = 27, len(df) - 27
    assert seen[-1] == READOUT_DRAWS * n_train + n_val  # all training rows fit under the choices' cap
    assert all(h["val_s"] > 0 for h in s.history_["vae"])
    assert s.history_["readout"][0]["rows_s"] > 0
    DiffLMSynthesizer(**kw).fit(df)
    assert seen[-1] == 0
