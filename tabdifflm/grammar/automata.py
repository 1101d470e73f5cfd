"""Token grammar of a row: which decoder tokens may come next, so the LLM only writes valid rows.

Every piece of a row is tokenised on its own (literals, each categorical value, numbers digit by digit),
and a small automaton walks those pieces:

- literal text between values (``","`` or ``', "age": '``) is forced: one allowed token, zero cost;
- a categorical value follows a trie of the training categories, so unseen categories cannot be written;
- a number follows a digit automaton (sign, at most as many integer digits as the training range needs,
  exactly the column's decimals) that only writes numbers inside the training range, and a datetime
  follows its format with each field (year, month, ...) range-checked the same way.

A value ends when the model picks the first token of the next literal. Training uses the same allowed
sets (cross-entropy over the allowed tokens only), so the model learns exactly the distribution the
sampler draws from, and "nats per row" counts only real choices.
"""
from __future__ import annotations

import calendar
import math
import re

import pandas as pd

import torch

from .compiled import CompiledGrammar
from ..schema import ColumnSpec
from ..serialization import RowFormat, datetime_text, int_widths, parse_datetime

END = -1
DONE = ("D",)


class InvalidValue(ValueError):
    """A finished value that breaks the schema (a date that does not exist, a number out of range)."""


def char_token(tokenizer, ch: str) -> int:
    """Id of the single token that spells ``ch``; ValueError if the tokenizer has none."""
    ids = tokenizer.encode(ch, add_special_tokens=False)
    if len(ids) == 1:
        return ids[0]
    tid = tokenizer.convert_tokens_to_ids(ch)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id:
        return tid
    raise ValueError(f"the decoder's tokenizer has no single token for {ch!r}; it cannot spell numbers "
                     "digit by digit")


class CategoricalGrammar:
    """Trie over the token sequences of the column's category texts (and of the missing marker).

    ``values`` restricts it to some of them (None in it = the missing marker); ``seqs`` gives each value's
    token sequence instead of the category text's (conditions on numbers and dates use this with the
    values' digit tokens).
    """

    def __init__(self, col: ColumnSpec, fmt: RowFormat, tokenizer, end_token: int, values: list | None = None,
                 seqs: list | None = None):
        self.col = col
        self.children: list[dict[int, int]] = [{}]
        self.leaf: list[int | None] = [None]  # index into self.values
        self.depth: list[int] = [0]
        if values is None:
            values = list(col.categories) + ([None] if col.has_missing else [])
        self.values = list(values)
        self.seqs = []
        for i, v in enumerate(self.values):
            if seqs is not None:
                seq = list(seqs[i])
            else:
                text = fmt.missing_text if v is None else fmt.category_text(col, v)
                seq = tokenizer.encode(text, add_special_tokens=False) if text else []
            self.seqs.append(seq)
            node = 0
            for t in seq:
                nxt = self.children[node].get(t)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][t] = nxt
                    self.children.append({})
                    self.leaf.append(None)
                    self.depth.append(self.depth[node] + 1)
                node = nxt
            if self.leaf[node] is not None:
                raise ValueError(f"column {col.name!r}: two values share the token sequence of {v!r}")
            self.leaf[node] = i
        for node, idx in enumerate(self.leaf):
            if idx is not None and end_token in self.children[node]:
                v = "missing" if self.values[idx] is None else repr(self.values[idx])
                raise ValueError(f"column {col.name!r}: value {v} cannot be told apart from the separator")

    def start(self):
        return 0

    def allowed(self, s) -> tuple:
        a = tuple(self.children[s])
        return a + (END,) if self.leaf[s] is not None else a

    def step(self, s, tok):
        return self.children[s][tok]

    def position(self, s) -> int:
        """Tokens of the value written before state s."""
        return self.depth[s]

    def tokens(self) -> set[int]:
        return {t for ch in self.children for t in ch}

    def encode(self, v) -> list[int]:
        return self.seqs[self.values.index(v)]

    def finish(self, s, toks):
        return self.values[self.leaf[s]]


class _CharGrammar:
    """Shared by numbers and datetimes: values spelled one character token at a time."""

    def __init__(self, col, fmt, tokenizer, chars: str):
        self.col = col
        self.fmt = fmt
        self.tok = {c: char_token(tokenizer, c) for c in chars}
        self.char = {t: c for c, t in self.tok.items()}
        self.missing = tokenizer.encode(fmt.missing_text, add_special_tokens=False) if fmt.missing_text else []

    def tokens(self) -> set[int]:
        return set(self.tok.values()) | set(self.missing)

    def _missing_allowed(self, s):
        # state ("m", k): inside the missing marker
        k = s[1]
        return (self.missing[k],) if k < len(self.missing) else (END,)

    def encode(self, v) -> list[int]:
        if v is None:
            return list(self.missing)
        return [self.tok[c] for c in self.fmt.value_text(self.col, v)]

    def text(self, toks) -> str:
        return "".join(self.char[t] for t in toks)


def _cmp(x: int, y: int) -> int:
    return (x > y) - (x < y)


def _fixed_step(c_lo: int, c_hi: int, d: int, lo: str, hi: str, j: int):
    """Fixed-width digit automaton: comparisons with the bounds after digit d at position j, or None."""
    c_lo2 = c_lo if c_lo != 0 else _cmp(d, int(lo[j]))
    c_hi2 = c_hi if c_hi != 0 else _cmp(d, int(hi[j]))
    return (c_lo2, c_hi2) if c_lo2 >= 0 and c_hi2 <= 0 else None


class NumericGrammar(_CharGrammar):
    """Sign, integer digits, then exactly ``decimals`` decimals; only numbers inside the training range.

    The value is read as an integer count of 10^-decimals units. Its integer part is a variable-length
    digit automaton over [a, b] (state: digits so far and how the prefix compares with a's and b's
    prefixes, so an age in [17, 90] cannot be 5 or 123); its decimals a fixed-width one whose bounds
    are tight only when the integer part sits on a bound. Every finished number is in range.
    With the format's fixed-width numbers the integer part is a fixed-width automaton over the
    zero-padded bounds instead, so the first digit written is always the most significant one.
    """

    def __init__(self, col, fmt, tokenizer, units: tuple[int, int] | None = None, allow_missing: bool | None = None):
        super().__init__(col, fmt, tokenizer, "0123456789-.")
        p = self.decimals = 0 if col.is_int else col.decimals
        self.allow_missing = col.has_missing if allow_missing is None else allow_missing
        # integer columns keep exact Python ints (beyond 2**53 a float would move the bounds)
        lo, hi = (int(col.min), int(col.max)) if col.is_int else (round(col.min * 10 ** p), round(col.max * 10 ** p))
        if units is not None:  # a condition's range, in 10^-decimals units, inside the training range
            lo, hi = units
        self.unit_range = (lo, hi)  # every value it writes, in 10^-decimals units
        self.bounds = (lo / 10 ** p, hi / 10 ** p) if p else (lo, hi)
        pos = (max(lo, 0), hi) if hi >= 0 else None
        neg = (max(-hi, 1), -lo) if lo < 0 else None  # zero is written without a sign
        self.units = {False: pos, True: neg}
        self.ranges = {k: (v[0] // 10 ** p, v[1] // 10 ** p) if v else None for k, v in self.units.items()}
        self.max_int = max(len(str(r[1])) for r in self.ranges.values() if r)
        self.digits = tuple(self.tok[c] for c in "0123456789")
        self.width = int_widths(col) if fmt.fixed_width else None

    def _extend(self, neg, k, c_lo, c_hi, zero, d):
        """New (c_lo, c_hi) after appending digit d to the integer part, or None if no number in range starts so."""
        a, b = self.ranges[neg]
        if self.width is not None:
            w = self.width[neg]
            return _fixed_step(c_lo, c_hi, d, str(a).zfill(w), str(b).zfill(w), k) if k < w else None
        sa, sb = str(a), str(b)
        if zero or (k == 0 and d == 0 and a != 0):
            return None
        c_lo2 = c_lo if c_lo != 0 else (_cmp(d, int(sa[k])) if k < len(sa) else 1)
        c_hi2 = c_hi if c_hi != 0 else (_cmp(d, int(sb[k])) if k < len(sb) else 1)
        k2 = k + 1
        if k2 == 1 and d == 0:  # the integer part zero itself
            return c_lo2, c_hi2
        for L in range(max(k2, len(sa)), len(sb) + 1):
            if (L > len(sa) or c_lo2 >= 0) and (L < len(sb) or c_hi2 <= 0):
                return c_lo2, c_hi2
        return None

    def _int_done(self, neg, k, c_lo, c_hi):
        """(integer part is in range, equals the lower bound, equals the upper bound)."""
        a, b = self.ranges[neg]
        if self.width is not None:
            full = k == self.width[neg]
            return full, full and c_lo == 0, full and c_hi == 0
        la, lb = len(str(a)), len(str(b))
        ok = k >= 1 and la <= k <= lb and (k > la or c_lo >= 0) and (k < lb or c_hi <= 0)
        return ok, k == la and c_lo == 0, k == lb and c_hi == 0

    def _dec_bounds(self, neg, eq_lo, eq_hi):
        p = self.decimals
        A, B = self.units[neg]
        return (str(A % 10 ** p).zfill(p) if eq_lo else "0" * p), (str(B % 10 ** p).zfill(p) if eq_hi else "9" * p)

    def start(self):
        return ("s",)

    def allowed(self, s) -> tuple:
        kind = s[0]
        if kind == "s":
            a = self.allowed(("i", False, 0, 0, 0, False)) if self.ranges[False] else ()
            if self.ranges[True]:
                a += (self.tok["-"],)
            if self.allow_missing:
                a += (self.missing[0],) if self.missing else (END,)
            return a
        if kind == "i":  # ("i", neg, k, c_lo, c_hi, zero)
            neg, k, c_lo, c_hi, zero = s[1:]
            more = tuple(self.digits[d] for d in range(10) if self._extend(neg, k, c_lo, c_hi, zero, d) is not None)
            ok, eq_lo, eq_hi = self._int_done(neg, k, c_lo, c_hi)
            if ok:
                more += (self.tok["."],) if self.decimals else (END,)
            return more
        if kind == "f":  # ("f", neg, j, c_lo, c_hi, eq_lo, eq_hi)
            neg, j, c_lo, c_hi, eq_lo, eq_hi = s[1:]
            if j == self.decimals:
                return (END,)
            lo, hi = self._dec_bounds(neg, eq_lo, eq_hi)
            return tuple(self.digits[d] for d in range(10) if _fixed_step(c_lo, c_hi, d, lo, hi, j) is not None)
        return self._missing_allowed(s)

    def step(self, s, tok):
        kind, c = s[0], self.char.get(tok)
        if kind == "s":
            if c == "-":
                return ("i", True, 0, 0, 0, False)
            if c is not None and c.isdigit():
                return self.step(("i", False, 0, 0, 0, False), tok)
            return ("m", 1)
        if kind == "i":
            neg, k, c_lo, c_hi, zero = s[1:]
            if c == ".":
                _, eq_lo, eq_hi = self._int_done(neg, k, c_lo, c_hi)
                return ("f", neg, 0, 0 if eq_lo else 1, 0 if eq_hi else -1, eq_lo, eq_hi)
            c_lo2, c_hi2 = self._extend(neg, k, c_lo, c_hi, zero, int(c))
            return ("i", neg, k + 1, c_lo2, c_hi2, k == 0 and c == "0" and self.width is None)
        if kind == "f":
            neg, j, c_lo, c_hi, eq_lo, eq_hi = s[1:]
            lo, hi = self._dec_bounds(neg, eq_lo, eq_hi)
            return ("f", neg, j + 1, *_fixed_step(c_lo, c_hi, int(c), lo, hi, j), eq_lo, eq_hi)
        return ("m", s[1] + 1)

    def position(self, s) -> int:
        kind = s[0]
        if kind == "s":
            return 0
        if kind == "i":
            return int(s[1]) + s[2]
        if kind == "f":
            return int(s[1]) + (self.width[s[1]] if self.width else self.max_int) + 1 + s[2]
        return s[1]

    def finish(self, s, toks):
        if s[0] == "m" or (s[0] == "s" and not toks):
            return None
        if self.col.is_int:  # exact; the automaton keeps it in range
            return int(self.text(toks))
        x = float(self.text(toks))
        # the automaton keeps values in range; clip only the last-ulp float error of the decimal text
        return min(max(x, self.bounds[0]), self.bounds[1])


_FIELDS = {"%Y": (4, None), "%m": (2, (1, 12)), "%d": (2, (1, 31)), "%H": (2, (0, 23)), "%M": (2, (0, 59)),
           "%S": (2, (0, 59)), "%f": (6, (0, 999999))}


class DatetimeGrammar(_CharGrammar):
    """The column's strftime pattern: each field a fixed-width range automaton (months 01-12, ...), every
    other character forced, and the whole text between the texts of the training minimum and maximum.
    The formats write the most significant field first at fixed width, so text order is time order and a
    digit-by-digit comparison with both bounds (as for fixed-width numbers) keeps every date inside the
    training span, where bounding the year alone let most dates fall outside and pile up at the bounds
    once clipped. A day past the month's end is moved to the month's last day."""

    def __init__(self, col, fmt, tokenizer, bounds: tuple[int, int] | None = None, allow_missing: bool | None = None):
        a, b = fmt.datetime_wrap()
        self.allow_missing = col.has_missing if allow_missing is None else allow_missing
        self.bounds = (int(col.min), int(col.max)) if bounds is None else bounds  # epoch ns
        lo_year = pd.Timestamp(self.bounds[0]).year
        hi_year = pd.Timestamp(self.bounds[1]).year
        self.segments = [("lit", ch) for ch in a]
        f, i = col.dt_format, 0
        while i < len(f):
            if f[i:i + 2] in _FIELDS:
                w, r = _FIELDS[f[i:i + 2]]
                r = r or (lo_year, hi_year)
                self.segments.append(("num", str(r[0]).zfill(w), str(r[1]).zfill(w)))
                i += 2
            else:
                self.segments.append(("lit", f[i]))
                i += 1
        self.segments += [("lit", ch) for ch in b]
        self.offsets = [0]
        for seg in self.segments:
            self.offsets.append(self.offsets[-1] + (len(seg[1]) if seg[0] == "num" else 1))
        self.lo_text = a + datetime_text(self.bounds[0], col) + b
        self.hi_text = a + datetime_text(self.bounds[1], col) + b
        lits = "".join(seg[1] for seg in self.segments if seg[0] == "lit")
        super().__init__(col, fmt, tokenizer, "0123456789" + "".join(sorted(set(lits))))
        self.digits = tuple(self.tok[c] for c in "0123456789")

    def start(self):
        # segment, position in it, comparisons with the field's bounds, comparisons with the span's bounds
        return ("p", 0, 0, 0, 0, 0, 0)

    def _digit(self, s, d):
        """(field comparisons, span comparisons) after digit d in state s, or None if no date in range
        starts so."""
        _, i, j, c_lo, c_hi, g_lo, g_hi = s
        seg = self.segments[i]
        field = _fixed_step(c_lo, c_hi, d, seg[1], seg[2], j)
        span = _fixed_step(g_lo, g_hi, d, self.lo_text, self.hi_text, self.offsets[i] + j)
        return None if field is None or span is None else (field, span)

    def allowed(self, s) -> tuple:
        if s[0] == "m":
            return self._missing_allowed(s)
        i, j = s[1], s[2]
        if i == len(self.segments):
            return (END,)
        seg = self.segments[i]
        if seg[0] == "lit":
            a = (self.tok[seg[1]],)
        else:
            a = tuple(self.digits[d] for d in range(10) if self._digit(s, d) is not None)
        if i == 0 and j == 0 and self.allow_missing:
            a += (self.missing[0],) if self.missing else (END,)
        return a

    def step(self, s, tok):
        if s[0] == "m":
            return ("m", s[1] + 1)
        _, i, j, c_lo, c_hi, g_lo, g_hi = s
        seg = self.segments[i]
        if i == 0 and j == 0 and self.allow_missing and self.missing and tok == self.missing[0] \
                and tok not in self.allowed(s)[:-1]:
            return ("m", 1)
        if seg[0] == "lit":
            return ("p", i + 1, 0, 0, 0, g_lo, g_hi)
        (c_lo, c_hi), (g_lo, g_hi) = self._digit(s, int(self.char[tok]))
        return ("p", i + 1, 0, 0, 0, g_lo, g_hi) if j + 1 == len(seg[1]) else ("p", i, j + 1, c_lo, c_hi, g_lo, g_hi)

    def position(self, s) -> int:
        if s[0] == "m":
            return s[1]
        _, i, j = s[:3]
        return sum(len(seg[1]) if seg[0] == "num" else 1 for seg in self.segments[:i]) + j

    def finish(self, s, toks):
        if s[0] == "m" or not toks:
            return None
        a, b = self.fmt.datetime_wrap()
        text = self.text(toks)[len(a):len(toks) - len(b)]
        try:
            ns = parse_datetime(text, self.col)
        except ValueError:  # e.g. 2021-02-30: keep the month, take its last day
            parts = re.split(r"(\D)", text)
            y, m = int(parts[0]), int(parts[2])
            last = calendar.monthrange(y, m)[1]
            parts[4] = f"{min(int(parts[4]), last):02d}"
            ns = parse_datetime("".join(parts), self.col)
        return int(min(max(ns, self.bounds[0]), self.bounds[1]))


MAX_POSITIONS = 12  # value positions with their own latent logit group; later ones share the last


class Link:
    """Column ``second``'s automaton chosen by the value written in the earlier column ``first``: a bound
    that depends on a value already written (``Inequality`` between two columns).

    ``first_aut`` is a trie (:class:`CategoricalGrammar`) over the values ``first`` may take. The value with
    trie index v leaves ``memo[v]`` in the row state: an index into ``seconds``, the distinct automata
    ``second`` can use, or None for its own. Values that set the same bound share one memo, so the states
    between the two columns are copied once per distinct bound, not once per value.
    """

    def __init__(self, first: int, second: int, first_aut: CategoricalGrammar, memo: list, seconds: list):
        if not first < second:
            raise ValueError(f"a link runs from an earlier column to a later one, got {first} -> {second}")
        if len(memo) != len(first_aut.values):
            raise ValueError(f"memo has {len(memo)} entries for {len(first_aut.values)} values")
        self.first, self.second, self.first_aut = first, second, first_aut
        self.memo, self.seconds = list(memo), list(seconds)


class RowGrammar:
    """The automaton of a whole row, with interned integer states.

    ``allowed(state)`` is the tuple of decoder tokens allowed in a state; ``next_state(state, tok)`` moves
    on; state ``done`` means the row is complete. ``vocab`` [K] lists every token the grammar can ever emit
    (a few hundred of the decoder's tens of thousands). ``group_of(state)`` names the (column, position in
    the value) a choice belongs to, for the latent logit head; -1 for literal text.

    ``tables`` is the same automaton compiled to tensors (:class:`CompiledGrammar`), which the model's
    forward pass and the sampler use; this class is the reference they are tested against, and it reads
    and writes whole rows (``encode``/``decode``). ``restricted`` narrows columns (conditions), ``linked``
    narrows a column by a value written before it (:class:`Link`: an inequality between two columns).
    """

    def __init__(self, fmt: RowFormat, tokenizer):
        self.fmt = fmt
        self.schema = fmt.schema
        self.links: list[Link] = []
        self.lits = [tokenizer.encode(t, add_special_tokens=False) if t else [] for t in fmt.literals()]
        for i, lit in enumerate(self.lits[1:], 1):
            if not lit:
                raise ValueError(f"format {fmt.name!r}: empty literal after column {i - 1}")
        self.cols = []
        for i, col in enumerate(self.schema.columns):
            end = self.lits[i + 1][0]
            if col.kind == "categorical":
                g = CategoricalGrammar(col, fmt, tokenizer, end)
            elif col.kind == "numeric":
                g = NumericGrammar(col, fmt, tokenizer)
            else:
                g = DatetimeGrammar(col, fmt, tokenizer)
            self.cols.append(g)
        toks = {t for lit in self.lits for t in lit}
        self.group_offsets, n = [], 0
        self._positions = [min(self._value_len(g), MAX_POSITIONS) for g in self.cols]  # groups per column
        for g, k in zip(self.cols, self._positions):
            toks |= g.tokens()
            self.group_offsets.append(n)
            n += k
        self.n_groups = max(n, 1)
        self.vocab = torch.tensor(sorted(toks), dtype=torch.long)
        self._build()

    def _build(self):
        self._ids, self._states, self._allowed, self._trans, self._groups = {}, [], [], {}, []
        self.start = self._intern(self._enter_literal(0, 0, (None,) * len(self.links)))
        self.done = self._intern(DONE)
        self.tables = CompiledGrammar.build(self)  # interns every reachable state

    def restricted(self, cols: dict) -> "RowGrammar":
        """The same row grammar with some columns' automata replaced by narrower ones ({column index:
        automaton}, e.g. a condition's range or set of values). The sub-vocabulary and the latent logit
        groups stay those of this grammar, so a model trained on it runs on the restricted one as it is."""
        return self._derive(cols, [])

    def linked(self, links: list[Link]) -> "RowGrammar":
        """The same row grammar where each link's later column is narrowed by the value written in its
        earlier one (each column in one link at most). States between the two columns carry the link's
        memo, so the compiled tables grow by a copy of those states per distinct bound."""
        used = [c for link in links for c in (link.first, link.second)]
        if len(used) != len(set(used)):
            raise ValueError("a column can take part in one link only")
        autos = [link.first_aut for link in links] + [a for link in links for a in link.seconds]
        return self._derive({link.first: link.first_aut for link in links}, links, autos)

    def _derive(self, cols: dict, links: list, autos=None) -> "RowGrammar":
        if self.links:
            raise ValueError("narrow the grammar's columns before linking them")
        g = object.__new__(RowGrammar)
        g.__dict__.update({k: v for k, v in self.__dict__.items()
                           if k in ("fmt", "schema", "lits", "group_offsets", "_positions", "n_groups", "vocab")})
        g.cols = [cols.get(i, c) for i, c in enumerate(self.cols)]
        g.links = list(links)
        autos = list(cols.values()) if autos is None else autos
        extra = set().union(*(c.tokens() for c in autos)) - set(self.vocab.tolist()) if autos else set()
        if extra:
            raise ValueError(f"tokens {sorted(extra)[:5]} are not in the grammar's vocabulary")
        g._build()
        return g

    # -- states ------------------------------------------------------------------------------------------
    # ("L", i, k, m): k-th token of the literal before column i; ("V", i, sub, m): inside column i's value,
    # sub its automaton's state; DONE. m holds one memo per link (None while the link is not active).
    def _enter_literal(self, i, k, m):
        if k < len(self.lits[i]):
            return ("L", i, k, m)
        if i == len(self.cols):
            return DONE
        return ("V", i, self._automaton(i, m).start(), m)

    def _automaton(self, i: int, m: tuple):
        """Column i's automaton under the links' memos m."""
        for link, v in zip(self.links, m):
            if link.second == i and v is not None:
                return link.seconds[v]
        return self.cols[i]

    def _leave(self, i: int, sub, m: tuple) -> tuple:
        """The memos after column i's value ends in state sub: set by a link it starts, dropped by one it ends."""
        if not self.links:
            return m
        out = list(m)
        for j, link in enumerate(self.links):
            if link.first == i:
                out[j] = link.memo[self.cols[i].leaf[sub]]
            elif link.second == i:
                out[j] = None
        return tuple(out)

    def _intern(self, st) -> int:
        sid = self._ids.get(st)
        if sid is None:
            sid = len(self._states)
            self._ids[st] = sid
            self._states.append(st)
            a = self._compute_allowed(st)
            self._allowed.append(a)
            if st[0] == "V":
                pos = min(self._automaton(st[1], st[3]).position(st[2]), self._positions[st[1]] - 1)
                self._groups.append(self.group_offsets[st[1]] + pos)
            else:
                self._groups.append(-1)
        return sid

    @property
    def K(self) -> int:
        """Size of the grammar's sub-vocabulary."""
        return len(self.vocab)

    @property
    def n_states(self) -> int:
        """States interned so far (all reachable ones once ``tables`` is built)."""
        return len(self._states)

    def n_states_between(self, first: int, second: int) -> int:
        """States after column ``first``'s value up to the end of column ``second``'s (the literals between
        and the values of the columns after ``first``): what a link between the two copies per bound."""
        return sum(1 for st in self._states if st[0] in ("L", "V") and first < st[1] <= second)

    def group_of(self, sid: int) -> int:
        """Latent logit group of a state (-1 outside values)."""
        return self._groups[sid]

    @staticmethod
    def _value_len(g) -> int:
        """Most tokens one value of the column can take."""
        if isinstance(g, CategoricalGrammar):
            return max(len(s) for s in g.seqs) + 1
        if isinstance(g, NumericGrammar):
            return max(1 + g.max_int + 1 + g.decimals, len(g.missing)) + 1
        return max(sum(len(seg[1]) if seg[0] == "num" else 1 for seg in g.segments), len(g.missing)) + 1

    def _compute_allowed(self, st) -> tuple:
        if st[0] == "D":
            return ()
        if st[0] == "L":
            return (self.lits[st[1]][st[2]],)
        i, sub = st[1], st[2]
        a = self._automaton(i, st[3]).allowed(sub)
        if END in a:
            a = tuple(t for t in a if t != END) + (self.lits[i + 1][0],)
        return a

    def allowed(self, sid: int) -> tuple:
        return self._allowed[sid]

    def n_choices(self, sid: int) -> int:
        return len(self._allowed[sid])

    def next_state(self, sid: int, tok: int) -> int:
        """State after emitting ``tok`` in state ``sid`` (tok must be allowed)."""
        key = (sid, tok)
        nxt = self._trans.get(key)
        if nxt is None:
            st = self._states[sid]
            if st[0] == "L":
                nst = self._enter_literal(st[1], st[2] + 1, st[3])
            else:
                i, sub, m = st[1:]
                aut = self._automaton(i, m)
                col_allowed = aut.allowed(sub)
                if tok == self.lits[i + 1][0] and END in col_allowed and tok not in col_allowed:
                    nst = self._enter_literal(i + 1, 1, self._leave(i, sub, m))
                else:
                    nst = ("V", i, aut.step(sub, tok), m)
            nxt = self._intern(nst)
            self._trans[key] = nxt
        return nxt

    def column_of(self, sid: int) -> int | None:
        """Column whose value the state is writing (None for literals)."""
        st = self._states[sid]
        return st[1] if st[0] == "V" else None

    # -- whole rows --------------------------------------------------------------------------------------
    def encode(self, row) -> tuple[list[int], list[int]]:
        """Row values -> (tokens, state before each token). Raises ValueError if the row breaks the grammar."""
        toks = list(self.lits[0])
        for i, (g, v) in enumerate(zip(self.cols, row)):
            toks += g.encode(v)
            toks += self.lits[i + 1]
        states, sid = [], self.start
        for t in toks:
            if t not in self._allowed[sid]:
                raise ValueError(f"row {row!r} cannot be written in the grammar (token {t} in state "
                                 f"{self._states[sid]})")
            states.append(sid)
            sid = self.next_state(sid, t)
        assert sid == self.done
        return toks, states

    def decode(self, toks: list[int]) -> list:
        """Tokens of a complete row -> values; raises InvalidValue for a value that breaks the schema."""
        per_col = [[] for _ in self.cols]
        last = [None] * len(self.cols)  # (automaton, its state where the value ended)
        sid = self.start
        for t in toks:
            c = self.column_of(sid)
            nxt = self.next_state(sid, t)
            if c is not None:
                st = self._states[sid]
                if self.column_of(nxt) == c:
                    per_col[c].append(t)
                    last[c] = (self._automaton(c, st[3]), self._states[nxt][2])
                elif last[c] is None:
                    last[c] = (self._automaton(c, st[3]), st[2])
            sid = nxt
        if sid != self.done:
            raise InvalidValue("row is incomplete")
        return [last[i][0].finish(last[i][1], per_col[i]) if last[i] is not None else g.finish(g.start(), per_col[i])
                for i, g in enumerate(self.cols)]

    def max_tokens(self) -> int:
        """Upper bound on the tokens of one row (so generation always ends)."""
        return sum(len(lit) for lit in self.lits) + sum(self._value_len(g) - 1 for g in self.cols)

