import random

import numpy as np
import pandas as pd
import pytest
import torch

from tabdifflm.grammar import END, DatetimeGrammar, NumericGrammar, RowGrammar
from tabdifflm.schema import ColumnSpec, frame_rows, infer_schema
from tabdifflm.serialization import RowFormat, parse_datetime


class CharTokenizer:
    """One token per character: lets tests enumerate every string a grammar accepts."""

    unk_token_id = -99

    def encode(self, s, add_special_tokens=False):
        return [ord(c) for c in s]

    def convert_tokens_to_ids(self, s):
        return ord(s)


def accepted_strings(g):
    out, stack = set(), [(g.start(), "")]
    while stack:
        s, txt = stack.pop()
        for t in g.allowed(s):
            if t == END:
                out.add(txt)
            else:
                stack.append((g.step(s, t), txt + chr(t)))
    return out


@pytest.mark.parametrize("lo, hi", [(17, 90), (0, 99999), (-5, 12), (-120, -7), (0, 0), (3, 1000), (-3, 0)])
def test_integer_grammar_accepts_exactly_the_training_range(lo, hi):
    col = ColumnSpec(name="x", kind="numeric", dtype="int64", is_int=True, min=lo, max=hi)
    fmt = RowFormat("values", infer_schema(pd.DataFrame({"x": [lo, hi]})))
    g = NumericGrammar(col, fmt, CharTokenizer())
    assert accepted_strings(g) == {str(i) for i in range(lo, hi + 1)}


@pytest.mark.parametrize("lo, hi", [(17, 90), (0, 99999), (-5, 12), (-120, -7), (0, 0), (3, 1000), (-3, 0)])
def test_fixed_width_integer_grammar_accepts_exactly_the_padded_range(lo, hi):
    col = ColumnSpec(name="x", kind="numeric", dtype="int64", is_int=True, min=lo, max=hi)
    fmt = RowFormat("values", infer_schema(pd.DataFrame({"x": [lo, hi]})), "fixed")
    g = NumericGrammar(col, fmt, CharTokenizer())
    assert accepted_strings(g) == {fmt.value_text(col, i) for i in range(lo, hi + 1)}
    assert len({len(t.lstrip("-")) for t in accepted_strings(g) if t.startswith("-")}) <= 1  # one width a sign


@pytest.mark.parametrize("lo, hi", [(-2.25, 13.5), (0.05, 1.2), (-0.3, -0.02), (-1.0, 0.5), (-130.5, 12.0)])
def test_fixed_width_float_grammar_accepts_exactly_the_range(lo, hi):
    s = infer_schema(pd.DataFrame({"x": [lo, hi]}))
    col = s.columns[0]
    fmt = RowFormat("values", s, "fixed")
    got = accepted_strings(NumericGrammar(col, fmt, CharTokenizer()))
    p = col.decimals
    want = {fmt.value_text(col, round(i / 10 ** p, p)) for i in range(round(lo * 10 ** p), round(hi * 10 ** p) + 1)}
    assert got == want


@pytest.mark.parametrize("lo, hi", [(-2.25, 13.5), (0.05, 1.2), (-0.3, -0.02), (-1.0, 0.5)])
def test_float_grammar_accepts_exactly_the_range_at_its_precision(lo, hi):
    s = infer_schema(pd.DataFrame({"x": [lo, hi]}))
    g = NumericGrammar(s.columns[0], RowFormat("values", s), CharTokenizer())
    got = accepted_strings(g)
    p = s.columns[0].decimals
    assert p == len(str(abs(lo)).split(".")[1]) or p == len(str(abs(hi)).split(".")[1])
    assert all(len(t.split(".")[1]) == p for t in got)
    want = {round(i / 10 ** p, p) for i in range(round(lo * 10 ** p), round(hi * 10 ** p) + 1)}
    assert {float(t) for t in got} == want


def test_datetime_grammar_keeps_fields_in_range():
    df = pd.DataFrame({"t": pd.to_datetime(["2019-11-03", "2021-02-10"])})
    s = infer_schema(df)
    g = DatetimeGrammar(s.columns[0], RowFormat("values", s), CharTokenizer())
    rnd = random.Random(0)
    for _ in range(300):
        st, toks = g.start(), []
        while True:
            a = g.allowed(st)
            t = rnd.choice(a)
            if t == END:
                break
            toks.append(t)
            st = g.step(st, t)
        ns = g.finish(st, toks)
        assert s.columns[0].min <= ns <= s.columns[0].max
        y, m, d = map(int, "".join(map(chr, toks)).split("-"))
        assert 2019 <= y <= 2021 and 1 <= m <= 12 and 1 <= d <= 31
    # an impossible day is moved to the month's end, not rejected
    feb30 = [ord(c) for c in "2020-02-30"]
    assert pd.Timestamp(g.finish(("p", 5, 0, 0, 0), feb30)) == pd.Timestamp("2020-02-29")


@pytest.mark.parametrize("fmt_name, numbers", [("values", "plain"), ("values", "fixed"), ("json", "plain")])
def test_rows_encode_to_their_text_and_decode_back(mixed_df, smol_tokenizer, fmt_name, numbers):
    s = infer_schema(mixed_df)
    fmt = RowFormat(fmt_name, s, numbers)
    g = RowGrammar(fmt, smol_tokenizer)
    for row in frame_rows(mixed_df, s):
        toks, states = g.encode(row)
        assert smol_tokenizer.decode(toks) == fmt.serialise(row)
        assert g.decode(toks) == row
        assert len(toks) <= g.max_tokens()


def test_random_walks_only_write_valid_training_categories(adult_small, smol_tokenizer):
    s = infer_schema(adult_small)
    g = RowGrammar(RowFormat("values", s), smol_tokenizer)
    rnd = random.Random(0)
    for _ in range(200):
        sid, toks = g.start, []
        while sid != g.done:
            t = rnd.choice(g.allowed(sid))
            toks.append(t)
            sid = g.next_state(sid, t)
        assert len(toks) <= g.max_tokens()
        row = g.decode(toks)
        for c, v in zip(s.columns, row):
            if c.kind == "categorical":
                assert v in c.categories
            else:
                assert c.min <= v <= c.max


def test_structure_is_forced(adult_small, smol_tokenizer):
    """Separators and JSON keys are single-choice states: they cost nothing and cannot go wrong."""
    s = infer_schema(adult_small)
    for name in ("values", "json"):
        g = RowGrammar(RowFormat(name, s), smol_tokenizer)
        toks, states = g.encode(frame_rows(adult_small, s)[0])
        forced = sum(g.n_choices(st) == 1 for st in states)
        assert forced > 0
    g_json = RowGrammar(RowFormat("json", s), smol_tokenizer)
    first = g_json.encode(frame_rows(adult_small, s)[0])[1][0]
    assert g_json.n_choices(first) == 1  # the opening '{"age": ' is written by the sampler


def test_missing_values_are_a_choice_only_where_training_had_them(smol_tokenizer):
    df = pd.DataFrame({"a": [1.5, np.nan, 2.0], "b": [1, 2, 3]})
    s = infer_schema(df)
    g = RowGrammar(RowFormat("values", s), smol_tokenizer)
    comma = smol_tokenizer.encode(",", add_special_tokens=False)[0]
    assert comma in g.allowed(g.start)  # empty field = missing
    toks, states = g.encode(frame_rows(df, s)[0])
    b_start = states[toks.index(comma) + 1]
    assert smol_tokenizer.encode("\n", add_special_tokens=False)[0] not in g.allowed(b_start)


@pytest.mark.parametrize("numbers", ["plain", "fixed"])
def test_compiled_tables_agree_with_the_automaton_on_random_walks(mixed_df, smol_tokenizer, numbers):
    """Walking the Python automaton: at every state the compiled mask allows exactly allowed(), the compiled
    step lands on next_state(), and the forced/choice/column/group tables describe the same state."""
    s = infer_schema(mixed_df)
    g = RowGrammar(RowFormat("values", s, numbers), smol_tokenizer)
    tb = g.tables
    rnd = random.Random(1)
    vocab = tb.vocab.tolist()
    assert vocab == sorted(set(vocab)) and len(vocab) < 1000 and tb.n_states == g.n_states
    for _ in range(100):
        sid = g.start
        while sid != g.done:
            a = g.allowed(sid)
            st = torch.tensor([sid])
            assert {vocab[k] for k in tb.mask(st)[0].nonzero().flatten().tolist()} == set(a)
            assert bool(tb.choice[sid]) == (len(a) > 1)
            assert int(tb.forced[sid]) == (vocab.index(a[0]) if len(a) == 1 else -1)
            t = rnd.choice(a)
            k = tb.to_local(torch.tensor([t]))
            assert vocab[int(k)] == t
            nxt = g.next_state(sid, t)
            assert int(tb.step(st, k)) == nxt
            col, grp = int(tb.column[sid]), int(tb.group[sid])
            assert col == (-1 if g.column_of(sid) is None else g.column_of(sid))
            if len(a) > 1:  # every choice sits in a value and has a latent logit group of that column
                assert col >= 0 and g.group_offsets[col] <= grp < g.n_groups
                end = g.group_offsets[col + 1] if col + 1 < len(g.cols) else g.n_groups
                assert grp < end
            sid = nxt
    assert g.n_states == tb.n_states  # walking found no state the compiler missed


@pytest.mark.parametrize("fmt", ["values", "json"])
def test_rows_walked_on_the_compiled_tables_alone_are_rows_of_the_automaton(adult_small, smol_tokenizer, fmt):
    """The other direction: batches of random walks that only use the tables (mask, forced, step) end in
    done within max_tokens, and the automaton decodes every one and writes it back to the same tokens."""
    s = infer_schema(adult_small)
    g = RowGrammar(RowFormat(fmt, s, "fixed" if fmt == "values" else "plain"), smol_tokenizer)
    tb = g.tables
    gen = torch.Generator().manual_seed(0)
    B = 64
    state = torch.full((B,), tb.start)
    rows = [[] for _ in range(B)]
    for _ in range(tb.max_tokens):
        live = state != tb.done
        if not live.any():
            break
        m = tb.mask(torch.where(live, state, tb.start)).float()
        pick = torch.multinomial(m, 1, generator=gen).squeeze(1)
        tok = torch.where(tb.forced[state] >= 0, tb.forced[state], pick)
        for b in live.nonzero().flatten().tolist():
            rows[b].append(int(tb.vocab[tok[b]]))
        state = tb.step(state, tok)
    assert (state == tb.done).all()
    for r in rows:
        values = g.decode(r)
        assert g.encode(values)[0] == r


def test_compiled_tables_are_small_and_move_between_devices(adult_small, smol_tokenizer):
    g = RowGrammar(RowFormat("values", infer_schema(adult_small), "fixed"), smol_tokenizer)
    tb = g.tables
    assert tb.nbytes() < 1 << 20  # bit masks and an edge list, no dense states x vocabulary table
    assert tb.to("cpu") is tb and tb.to("meta").mask(torch.tensor([tb.start], device="meta")).device.type == "meta"


@pytest.mark.parametrize("times", [
    ["2021-03-01", "2021-03-10", "2021-03-05"],                       # a span inside one year
    ["2019-11-03 08:15", "2021-02-10 17:45"],
    ["2020-06-01 00:00:01.5", "2020-06-01 00:00:03.25"],              # sub-second values
])
def test_datetime_grammar_writes_only_dates_inside_the_training_span(times):
    """Before, only the year was bounded: dates outside the span were clipped and piled up at its bounds,
    and sub-second values lost their fraction."""
    df = pd.DataFrame({"t": pd.to_datetime(times)})
    s = infer_schema(df)
    col = s.columns[0]
    fmt = RowFormat("values", s)
    g = DatetimeGrammar(col, fmt, CharTokenizer())
    for v in frame_rows(df, s):  # the training values themselves are written exactly
        assert parse_datetime(fmt.value_text(col, v[0]), col) == v[0]
    rnd = random.Random(0)
    for _ in range(300):
        st, toks = g.start(), []
        while True:
            t = rnd.choice(g.allowed(st))
            if t == END:
                break
            toks.append(t)
            st = g.step(st, t)
        text = "".join(map(chr, toks))
        assert g.lo_text <= text <= g.hi_text  # inside the span as written, before any clipping
        assert col.min <= g.finish(st, toks) <= col.max
