"""Conditions on columns: ``sample(n, conditions={"sex": "Female", "age": (40, None)})``.

A condition is a value, a set of values (list or set) or an inclusive range (a 2-tuple, None for an open
end) for numbers and dates. :func:`parse_conditions` checks every condition against the training schema
before any work (unknown column, value never seen, range outside the training range, a value the column's
precision cannot hold) and :func:`restrict` narrows the row grammar to them: the conditioned column's
automaton is replaced by one that can only write the allowed values, so every row meets the conditions.
Which latents the rows come from is the sampler's part (``DiffLMSynthesizer.sample``): without that
step the other columns would follow the unconditional distribution beside a forced value.

:func:`link_inequalities` writes a two-column ``Inequality`` into the grammar the same way: the value
written in the earlier column narrows the later column's range, so the rule holds in every row.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction

import pandas as pd

from .constraints import Inequality
from .grammar import CategoricalGrammar, DatetimeGrammar, Link, NumericGrammar, RowGrammar, char_token
from .schema import ColumnSpec, Schema
from .serialization import datetime_text, parse_datetime


@dataclass(frozen=True)
class Condition:
    """One column's condition, in the schema's own values (numbers, categories, datetimes as epoch ns).

    ``values``: the allowed values (None = missing), or None for a range ``low``..``high`` (inclusive;
    in 10^-decimals units for float columns, so comparisons are exact).
    """

    column: int
    name: object
    values: tuple | None = None
    low: int | None = None
    high: int | None = None

    def holds(self, v, col: ColumnSpec) -> bool:
        """Does a schema value of the column meet the condition?"""
        if self.values is not None:
            return _key(v, col) in {_key(x, col) for x in self.values}
        return v is not None and self.low <= _key(v, col) <= self.high

    def describe(self) -> str:
        if self.values is not None:
            return f"{self.name!r} in {list(self.values)!r}"
        return f"{self.name!r} in [{self.low}, {self.high}]"


def _key(v, col: ColumnSpec):
    """Exact comparison key: float columns in 10^-decimals units, everything else as it is."""
    if v is None or col.kind != "numeric" or col.is_int:
        return v
    return round(v * 10 ** col.decimals)


_NONE = object()


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT


def _number(col: ColumnSpec, v, what: str):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"condition on column {col.name!r}: {what} {v!r} is not a number")
    if not math.isfinite(float(v)):
        raise ValueError(f"condition on column {col.name!r}: {what} {v!r} is not finite")
    return v


def _ns(col: ColumnSpec, v, what: str) -> int:
    try:
        ts = pd.Timestamp(v)
    except (ValueError, TypeError) as e:
        raise ValueError(f"condition on column {col.name!r}: {what} {v!r} is not a date ({e})") from None
    if col.tz:
        ts = (ts.tz_localize(col.tz) if ts.tzinfo is None else ts).tz_convert("UTC").tz_localize(None)
    elif ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.as_unit("ns").value)


def _value(col: ColumnSpec, v):
    """A user's value -> the schema value, or a ValueError naming the column and the value."""
    if _missing(v):
        if not col.has_missing:
            raise ValueError(f"condition on column {col.name!r}: the column had no missing values in training")
        return None
    if col.kind == "categorical":
        v = v.item() if hasattr(v, "item") else v
        for same in (lambda c: c == v and type(c) is type(v), lambda c: c == v, lambda c: str(c) == str(v)):
            hit = next((c for c in col.categories if same(c)), _NONE)  # exact type first, then looser
            if hit is not _NONE:
                return hit
        shown = ", ".join(repr(c) for c in col.categories[:8]) + (", ..." if len(col.categories) > 8 else "")
        raise ValueError(f"condition on column {col.name!r}: value {v!r} was never seen in training "
                         f"(known values: {shown})")
    if col.kind == "numeric":
        x = _number(col, v, "value")
        if col.is_int:
            if x != int(x):
                raise ValueError(f"condition on column {col.name!r}: {v!r} is not an integer")
            x = int(x)
        elif abs(x * 10 ** col.decimals - round(x * 10 ** col.decimals)) > 1e-6:
            raise ValueError(f"condition on column {col.name!r}: {v!r} has more than the column's "
                             f"{col.decimals} decimals")
        if not col.min <= x <= col.max:
            raise ValueError(f"condition on column {col.name!r}: {v!r} is outside the training range "
                             f"[{col.min}, {col.max}]")
        return x
    ns = _ns(col, v, "value")
    if parse_datetime(datetime_text(ns, col), col) != ns:
        raise ValueError(f"condition on column {col.name!r}: {v!r} cannot be written in the column's format "
                         f"{col.dt_format!r}")
    if not col.min <= ns <= col.max:
        raise ValueError(f"condition on column {col.name!r}: {v!r} is outside the training span")
    return ns


def _range(col: ColumnSpec, i: int, lo, hi) -> Condition:
    if col.kind == "categorical":
        raise ValueError(f"condition on column {col.name!r}: a range needs a numeric or date column; give a "
                         "list of values instead")
    if col.kind == "numeric":
        p = 0 if col.is_int else col.decimals
        a = col.min if _missing(lo) else max(_number(col, lo, "lower bound"), col.min)
        b = col.max if _missing(hi) else min(_number(col, hi, "upper bound"), col.max)
        low, high = math.ceil(round(a * 10 ** p, 6)), math.floor(round(b * 10 ** p, 6))
        if col.is_int:
            low, high = max(low, int(col.min)), min(high, int(col.max))
    else:
        low = int(col.min) if _missing(lo) else max(_ns(col, lo, "lower bound"), int(col.min))
        high = int(col.max) if _missing(hi) else min(_ns(col, hi, "upper bound"), int(col.max))
        if parse_datetime(datetime_text(high, col), col) < low:  # the format's resolution skips the range
            high = low - 1
    if low > high:
        span = (f"[{col.min}, {col.max}]" if col.kind == "numeric" else
                f"[{pd.Timestamp(int(col.min))}, {pd.Timestamp(int(col.max))}]")
        raise ValueError(f"condition on column {col.name!r}: the range ({lo!r}, {hi!r}) holds no value the "
                         f"column can take (training range {span})")
    return Condition(i, col.name, low=low, high=high)


def parse_conditions(conditions: dict | None, schema: Schema) -> list[Condition]:
    """{column: value | list/set of values | (low, high)} -> checked conditions, in schema order."""
    if not conditions:
        return []
    if not isinstance(conditions, dict):
        raise TypeError(f"conditions must be a dict {{column: value, list of values or (low, high)}}, "
                        f"got {type(conditions).__name__}")
    index = {c.name: i for i, c in enumerate(schema.columns)}
    out = []
    for name, spec in conditions.items():
        if name not in index:
            raise ValueError(f"condition on unknown column {name!r}; the columns are {list(index)}")
        i = index[name]
        col = schema.columns[i]
        if isinstance(spec, tuple) and len(spec) == 2 and col.kind != "categorical":
            out.append(_range(col, i, *spec))
            continue
        if isinstance(spec, (list, set, frozenset, tuple, pd.Index, pd.Series)):
            values = []
            for v in spec:
                x = _value(col, v)
                if all(_key(x, col) != _key(y, col) for y in values):
                    values.append(x)
            if not values:
                raise ValueError(f"condition on column {name!r}: the set of values is empty")
        else:
            values = [_value(col, spec)]
        out.append(Condition(i, name, values=tuple(values)))
    return sorted(out, key=lambda c: c.column)


def restrict(grammar: RowGrammar, conditions: list[Condition], tokenizer) -> RowGrammar:
    """The row grammar with each conditioned column narrowed to its condition (same vocabulary and groups)."""
    cols = {}
    for cond in conditions:
        i = cond.column
        base = grammar.cols[i]
        col, fmt = base.col, grammar.fmt
        end = grammar.lits[i + 1][0]
        if cond.values is not None:
            if col.kind == "categorical":
                cols[i] = CategoricalGrammar(col, fmt, tokenizer, end, values=list(cond.values))
            else:
                cols[i] = value_trie(grammar, i, list(cond.values), tokenizer)
        elif col.kind == "numeric":
            cols[i] = NumericGrammar(col, fmt, tokenizer, units=(cond.low, cond.high), allow_missing=False)
        else:
            cols[i] = DatetimeGrammar(col, fmt, tokenizer, bounds=(cond.low, cond.high), allow_missing=False)
    return grammar.restricted(cols)


def value_trie(grammar: RowGrammar, i: int, values: list, tokenizer) -> CategoricalGrammar:
    """A trie over some values of number or date column i, spelled with the digit tokens the full automaton
    writes them with (None = the missing marker)."""
    col, fmt = grammar.cols[i].col, grammar.fmt
    seqs = [(tokenizer.encode(fmt.missing_text, add_special_tokens=False) if fmt.missing_text else [])
            if v is None else [char_token(tokenizer, ch) for ch in fmt.value_text(col, v)] for v in values]
    return CategoricalGrammar(col, fmt, tokenizer, grammar.lits[i + 1][0], values=values, seqs=seqs)


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _values_of(aut, limit: int) -> list | None:
    """Every value a number column's automaton can write (None = missing), or None past ``limit``."""
    if isinstance(aut, CategoricalGrammar):
        return list(aut.values)
    if not isinstance(aut, NumericGrammar):
        return None
    lo, hi = aut.unit_range
    if hi - lo + 1 > limit:
        return None
    p = aut.decimals
    vals = list(range(lo, hi + 1)) if aut.col.is_int else [u / 10 ** p for u in range(lo, hi + 1)]
    return vals + ([None] if aut.allow_missing else [])


def _bounded(aut, op: str, v, fmt, tokenizer, end: int):
    """Column automaton ``aut`` narrowed to values x with ``x op v``: a trie for a trie, a unit range
    (lo, hi) for a number automaton; None if no value is left."""
    x = Fraction(str(v))
    if isinstance(aut, CategoricalGrammar):
        ops = {"<": x.__gt__, "<=": x.__ge__, ">": x.__lt__, ">=": x.__le__}
        keep = [k for k, y in enumerate(aut.values) if y is not None and ops[op](Fraction(str(y)))]
        if not keep:
            return None
        keep += [k for k, y in enumerate(aut.values) if y is None]
        return CategoricalGrammar(aut.col, fmt, tokenizer, end,
                                  values=[aut.values[k] for k in keep], seqs=[aut.seqs[k] for k in keep])
    scaled = x * 10 ** aut.decimals
    lo, hi = aut.unit_range
    if op == ">=":
        lo = max(lo, math.ceil(scaled))
    elif op == ">":
        lo = max(lo, math.floor(scaled) + 1)
    elif op == "<=":
        hi = min(hi, math.floor(scaled))
    else:
        hi = min(hi, math.ceil(scaled) - 1)
    if lo > hi:
        return None
    return (lo, hi)


def link_inequalities(grammar: RowGrammar, constraints, tokenizer, max_values: int = 2048,
                      max_states: int = 100_000) -> tuple[RowGrammar, list]:
    """The row grammar with each two-column ``Inequality`` written into it, where it can be.

    The earlier column (in the row's order) is written from a trie over its values, and the value it ends
    on narrows the later column's range, so no row can break the rule. That needs two number columns, at
    most ``max_values`` values the earlier one can take (an integer column, or a few decimals over a short
    range), each column in one such rule, and at most about ``max_states`` grammar states in all. Returns
    (grammar, the constraints it holds); the others are left to the caller (resampling). A rule that no
    value of the earlier column can keep under the grammar's narrowing (conditions) is a ValueError.
    """
    links, held, used = [], [], set()
    index = {c.name: i for i, c in enumerate(grammar.schema.columns)}
    budget = max_states - grammar.n_states
    for c in constraints:
        if not isinstance(c, Inequality):
            continue
        if c.low not in index or c.high not in index:  # a column passed through, not modelled
            continue
        a, b = index[c.low], index[c.high]
        first, second = min(a, b), max(a, b)
        if a == b or {first, second} & used:
            continue
        f_aut, s_aut = grammar.cols[first], grammar.cols[second]
        if f_aut.col.kind != "numeric" or s_aut.col.kind != "numeric":
            continue
        values = _values_of(f_aut, max_values)
        if values is None or not isinstance(s_aut, (NumericGrammar, CategoricalGrammar)):
            continue
        op = _FLIP[c.op] if first == a else c.op  # the later column's relation to the earlier one's value
        end = grammar.lits[second + 1][0]
        seconds, key_of, kept, memo = [], {}, [], []
        for v in values:
            if v is None:  # a missing side keeps the rule: the later column is free
                kept.append(v)
                memo.append(None)
                continue
            narrowed = _bounded(s_aut, op, v, grammar.fmt, tokenizer, end)
            if narrowed is None:
                continue
            key = narrowed if isinstance(narrowed, tuple) else tuple(map(repr, narrowed.values))
            if key not in key_of:
                key_of[key] = len(seconds)
                seconds.append(NumericGrammar(s_aut.col, grammar.fmt, tokenizer, units=narrowed,
                                              allow_missing=s_aut.allow_missing)
                               if isinstance(narrowed, tuple) else narrowed)
            kept.append(v)
            memo.append(key_of[key])
        if not any(v is not None for v in kept):
            raise ValueError(f"constraint {c.describe()} cannot be kept: no value of {c.low!r} and {c.high!r} "
                             "that the conditions allow meets it")
        cost = len(seconds) * (grammar.n_states_between(first, second) + len(values))
        if cost > budget:
            continue
        budget -= cost
        links.append(Link(first, second, value_trie(grammar, first, kept, tokenizer), memo, seconds))
        held.append(c)
        used |= {first, second}
    return (grammar.linked(links) if links else grammar), held


def without_missing(grammar: RowGrammar, tokenizer) -> RowGrammar:
    """The row grammar with the missing marker taken out of every column that had one (imputation fills
    cells with values, never with "missing")."""
    cols = {}
    for i, aut in enumerate(grammar.cols):
        col = aut.col
        if not col.has_missing:
            continue
        if col.kind == "categorical":
            cols[i] = CategoricalGrammar(col, grammar.fmt, tokenizer, grammar.lits[i + 1][0], values=list(col.categories))
        elif col.kind == "numeric":
            cols[i] = NumericGrammar(col, grammar.fmt, tokenizer, allow_missing=False)
        else:
            cols[i] = DatetimeGrammar(col, grammar.fmt, tokenizer, allow_missing=False)
    return grammar.restricted(cols) if cols else grammar
