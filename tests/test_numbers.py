"""The number head: digit logits read off one distribution over each number column's value."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tabdifflm import DiffLMSynthesizer
from tabdifflm.grammar import RowGrammar
from tabdifflm.model import LatentLogitHead
from tabdifflm.numbers import NumberHead
from tabdifflm.persistence import read_model_file, write_model_file
from tabdifflm.schema import frame_rows, infer_schema
from tabdifflm.serialization import RowFormat
from tabdifflm.training import pad_batch


@pytest.fixture(scope="module")
def table():
    """An integer column over [0, 999] and a two-decimal column over [-12.5, 30.25], and a category."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"n": rng.integers(0, 1000, 60), "x": rng.uniform(-12.5, 30.25, 60).round(2),
                       "c": rng.choice(["a", "b"], 60)})
    df.loc[0, "n"], df.loc[1, "n"], df.loc[0, "x"], df.loc[1, "x"] = 0, 999, -12.5, 30.25
    return df


@pytest.fixture(scope="module")
def grammar(table, smol_tokenizer):
    return RowGrammar(RowFormat("values", infer_schema(table), "fixed"), smol_tokenizer)


def _choices(g, row):
    """Grammar states and sub-vocabulary tokens [1, L] of one encoded row."""
    toks, sts = g.encode(row)
    t, s, v = pad_batch([toks], [sts], g.done)
    local = g.tables.to_local(t)
    return s, local


def _log_prob(numbers, params, g, row, column):
    """log p(value of ``column``) under the number head alone: its digit logits, masked, chained."""
    t = g.tables
    s, local = _choices(g, row)
    cells = numbers.cells(t.column[s], local)
    pick = (t.choice[s] & (t.column[s] == column))[0]
    logits = numbers.logits(params.expand(int(pick.sum()), -1), cells[0, pick])
    logits = logits.masked_fill(~t.mask(s[0, pick]), float("-inf"))
    return torch.log_softmax(logits.double(), -1).gather(1, local[0, pick][:, None]).sum().item()


def _mixture_log_mass(numbers, params, k, lo, hi):
    """log of the mixture's mass of number column k over values [lo, hi] (units), relative to its range."""
    y = torch.tensor([[lo - 0.5, hi + 0.5, numbers.knots[k, 0].item(), numbers.knots[k, -1].item()]],
                     dtype=torch.float64)
    t = numbers._spread(torch.tensor([k]), y)[0]
    M = numbers.components
    w, mu, s = params.double().view(-1, 3, M)[k].unbind(0)
    scale = torch.nn.functional.softplus(s) + 1e-3
    cdf = (torch.softmax(w, 0) * torch.sigmoid((t[:, None] - mu) / scale)).sum(1)
    return math.log((cdf[1] - cdf[0]).item()) - math.log((cdf[3] - cdf[2]).item())


def test_digits_chain_to_the_mixture_discretised(grammar, table):
    """With the head alone, the probability of a number is the mixture's mass over the values that round to
    it, for integers, decimals and negative numbers alike: the digits are one distribution, not ten."""
    torch.manual_seed(0)
    numbers = NumberHead(grammar, 5, components=3)
    numbers.set_knots([table["n"].tolist(), table["x"].tolist()])
    params = numbers(torch.randn(1, 5) * 3)  # [1, NP]
    schema = grammar.schema
    for n_value, x_value in [(0, 0.0), (7, -12.5), (123, 3.07), (999, -0.01), (500, 30.25), (48, -9.99)]:
        row = frame_rows(pd.DataFrame({"n": [n_value], "x": [x_value], "c": ["a"]}), schema)[0]
        got = _log_prob(numbers, params, grammar, row, 0)
        assert got == pytest.approx(_mixture_log_mass(numbers, params[0].view(2, -1), 0, n_value, n_value), abs=1e-6)
        units = round(x_value * 100)
        got = _log_prob(numbers, params, grammar, row, 1)
        assert got == pytest.approx(_mixture_log_mass(numbers, params[0].view(2, -1), 1, units, units), abs=1e-6)


def test_cells_track_the_value_written_so_far(grammar, table):
    numbers = NumberHead(grammar, 5)
    t = grammar.tables
    row = frame_rows(pd.DataFrame({"n": [45], "x": [-3.5], "c": ["b"]}), grammar.schema)[0]
    s, local = _choices(grammar, row)
    cells = numbers.cells(t.column[s], local)[0]
    # "045,-03.50,b\n": before each digit of n the prefix is what was written, in the first number column
    assert cells.k[:3].tolist() == [0, 0, 0] and cells.prefix[:3].tolist() == [0.0, 0.0, 4.0]
    assert cells.i[:3].tolist() == [0, 1, 2]
    x = (cells.k == 1).nonzero().squeeze(1)
    assert not cells.neg[x[0]] and cells.neg[x[1:]].all()  # the sign, then negative digits
    assert cells.prefix[x[-1]].item() == 350.0  # at the separator: 0, 3, 5, 0 written (the "." is no digit)
    assert (cells.k[x[-1] + 1:] == -1).all()  # the category is not a number


def test_generation_tracks_cells_as_training_does(grammar, table, tiny_kwargs):
    """Greedy rows written by the head alone pick, at every choice, the argmax of the teacher-forced logits
    of the same row: the sampler's running cells are the ones training computes."""
    from transformers import AutoModelForCausalLM

    from tabdifflm.injection import Injector
    from tabdifflm.model import RowModel

    dec = AutoModelForCausalLM.from_pretrained(tiny_kwargs["decoder"], dtype=torch.float32).eval()
    torch.manual_seed(1)
    numbers = NumberHead(grammar, 8)
    numbers.set_knots([table["n"].tolist(), table["x"].tolist()])
    head = LatentLogitHead(4, grammar.n_groups, grammar.K, hidden=8, numbers=numbers)
    with torch.no_grad():
        numbers.proj.weight.normal_(0, 2)
    model = RowModel(dec, Injector("soft_prompt", 4, dec, n_soft_tokens=1, n_prefix_tokens=1), grammar, head)
    z = torch.randn(12, 4) * 2
    rows = model.generate(z, temperature=0, head_only=True)
    values = {tuple(grammar.decode(r)[:2]) for r in rows}
    assert len(values) > 6  # the latent moves the numbers
    t = grammar.tables
    toks, sts, valid = pad_batch(rows, [grammar.encode(grammar.decode(r))[1] for r in rows], t.done)
    bi, ji = (valid & t.choice[sts]).nonzero(as_tuple=True)
    st = sts[bi, ji]
    logits = head.choice_logits(head(z), bi, t.group[st].clamp(min=0), model.tokens_before(toks, bi, ji),
                                model.number_cells(toks, sts, bi, ji)).masked_fill(~t.mask(st), float("-inf"))
    assert torch.equal(logits.argmax(-1), t.to_local(toks[bi, ji]))


def test_fit_uses_the_number_head_and_round_trips(tiny_kwargs, mixed_df, tmp_path):
    s = DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df)
    numbers = s.latent_head_.numbers
    assert numbers is not None and numbers.proj.weight.grad.abs().sum() > 0  # trained with the rest
    num_cols = [c.name for c in s.schema_.columns if c.kind == "numeric"]
    assert [s.schema_.columns[i].name for i in numbers.columns] == num_cols
    assert not torch.allclose(numbers.knots[0], torch.linspace(numbers.knots[0, 0].item(),
                                                               numbers.knots[0, -1].item(), numbers.knots.shape[1],
                                                               dtype=torch.float64))  # spread by the data
    s.save(tmp_path / "m.tdl")
    back = DiffLMSynthesizer.load(tmp_path / "m.tdl")
    assert torch.equal(back.latent_head_.numbers.knots, numbers.knots)
    pd.testing.assert_frame_equal(s.sample(8, random_state=3), back.sample(8, random_state=3))
    # the first 0.11 files also held what the grammar gives (digit tokens, widths...): they still load
    tensors, meta = read_model_file(tmp_path / "m.tdl")
    old = {**tensors, "latent_head.numbers.digit": torch.zeros(10, dtype=torch.long),
           "latent_head.numbers.width": torch.ones(3)}
    write_model_file(tmp_path / "old.tdl", old, meta)
    pd.testing.assert_frame_equal(DiffLMSynthesizer.load(tmp_path / "old.tdl").sample(8, random_state=3),
                                  back.sample(8, random_state=3))
    off = DiffLMSynthesizer(**{**tiny_kwargs, "number_head": 0}).fit(mixed_df)
    assert off.latent_head_.numbers is None
    with pytest.raises(ValueError, match="number_format='fixed'"):
        NumberHead(RowGrammar(RowFormat("values", s.schema_, "plain"), s._dec_tok), 4)


def test_columns_beyond_float64_integers_get_no_number_head(smol_tokenizer):
    """Values past 2**53 units cannot be told apart in float64: such a column is left to the other heads."""
    df = pd.DataFrame({"big": np.array([2 ** 60 + 7 * i for i in range(20)], dtype="int64"),
                       "small": np.arange(20), "c": ["a", "b"] * 10})
    g = RowGrammar(RowFormat("values", infer_schema(df), "fixed"), smol_tokenizer)
    assert NumberHead.columns_of(g) == [1]
    only_big = RowGrammar(RowFormat("values", infer_schema(df[["big", "c"]]), "fixed"), smol_tokenizer)
    with pytest.raises(ValueError, match="at most 15 digits"):
        NumberHead(only_big, 4)
