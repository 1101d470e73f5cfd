"""Business rules every synthetic row must keep: ``DiffLMSynthesizer(constraints=[...])``.

    Inequality("education-num", "<=", "age"), Positive("hours-per-week"), Negative("loss"),
    FixedCombinations(["city", "country"]), Predicate(lambda d: d.start <= d.end, name="start before end")

Each constraint checks a DataFrame at once (``holds(df) -> bool array``). ``fit`` refuses a table that
breaks one, naming the rows. Sampling writes into the row grammar what it can, so those rules cannot be
broken: a sign constraint narrows the column's range, and an ``Inequality`` between two number columns
narrows the later column's range by the value written in the earlier one (where that column takes at most
2,048 values: :func:`tabdifflm.conditions.link_inequalities`). Rows that break any other rule are written
again; ``last_sample_stats_`` lists the rules held in the grammar (``"constraints_in_grammar"``) and the
share of rows written again (``"constraint_resampled_share"``). ``FixedCombinations`` learns the combinations it
allows from the training rows (in the fitted copy, ``constraints_``); ``Predicate`` holds code, so a saved
model keeps every constraint but the predicates (a warning says so; pass them again with ``set_params``).
"""
from __future__ import annotations

import copy
import operator

import numpy as np
import pandas as pd

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class Constraint:
    """A rule on some columns; ``holds(df)`` -> bool array [len(df)]."""

    columns: tuple = ()

    def holds(self, df: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def fitted(self, df: pd.DataFrame) -> "Constraint":
        """The copy used by a fitted model (learns from the training rows where it needs to)."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict | None:
        return None

    def __repr__(self) -> str:
        return self.describe()

    def __eq__(self, other) -> bool:  # parameters compare by content (clone, get_params)
        return type(self) is type(other) and self.to_dict() == other.to_dict() and self.to_dict() is not None

    __hash__ = object.__hash__


class Inequality(Constraint):
    """``low <op> high`` between two columns, op one of <, <=, >, >= (rows with a missing side pass)."""

    def __init__(self, low, op: str, high):
        if op not in _OPS:
            raise ValueError(f"Inequality operator must be one of {list(_OPS)}, got {op!r}")
        self.low, self.op, self.high = low, op, high
        self.columns = (low, high)

    def holds(self, df):
        a, b = df[self.low], df[self.high]
        ok = _OPS[self.op](a, b).to_numpy(dtype=bool, na_value=False)
        return ok | a.isna().to_numpy() | b.isna().to_numpy()

    def describe(self):
        return f"Inequality({self.low!r}, {self.op!r}, {self.high!r})"

    def to_dict(self):
        return {"type": "Inequality", "low": self.low, "op": self.op, "high": self.high}


class Positive(Constraint):
    """Values of a numeric column above zero (``strict``) or at least zero; missing values pass."""

    sign = 1

    def __init__(self, column, strict: bool = True):
        self.column, self.strict = column, strict
        self.columns = (column,)

    def holds(self, df):
        s = df[self.column] * self.sign
        ok = (s > 0) if self.strict else (s >= 0)
        return ok.to_numpy(dtype=bool, na_value=False) | df[self.column].isna().to_numpy()

    def describe(self):
        return f"{type(self).__name__}({self.column!r}, strict={self.strict})"

    def to_dict(self):
        return {"type": type(self).__name__, "column": self.column, "strict": self.strict}


class Negative(Positive):
    """Values of a numeric column below zero (``strict``) or at most zero; missing values pass."""

    sign = -1


class FixedCombinations(Constraint):
    """The values of these columns appear only in combinations seen in the training rows."""

    def __init__(self, columns):
        self.columns = tuple(columns)
        if len(self.columns) < 2:
            raise ValueError("FixedCombinations needs two or more columns")
        self.allowed = None  # learnt by fitted()

    def fitted(self, df):
        out = copy.deepcopy(self)
        out.allowed = set(map(tuple, df[list(self.columns)].astype(object).where(df[list(self.columns)].notna(),
                                                                               None).itertuples(index=False)))
        return out

    def holds(self, df):
        if self.allowed is None:
            return np.ones(len(df), dtype=bool)
        sub = df[list(self.columns)].astype(object).where(df[list(self.columns)].notna(), None)
        return np.array([t in self.allowed for t in map(tuple, sub.itertuples(index=False))], dtype=bool)

    def describe(self):
        return f"FixedCombinations({list(self.columns)!r})"

    def to_dict(self):
        return {"type": "FixedCombinations", "columns": list(self.columns)}


class Predicate(Constraint):
    """A custom rule: ``fn(df)`` returns a bool array (or Series) over the rows. Not saved with the model."""

    def __init__(self, fn, name: str = "predicate", columns=()):
        if not callable(fn):
            raise TypeError(f"Predicate needs a function of a DataFrame, got {type(fn).__name__}")
        self.fn, self.name, self.columns = fn, name, tuple(columns)

    def holds(self, df):
        out = np.asarray(self.fn(df), dtype=bool)
        if out.shape != (len(df),):
            raise ValueError(f"Predicate {self.name!r} returned shape {out.shape}, expected ({len(df)},)")
        return out

    def describe(self):
        return f"Predicate({self.name!r})"

    def __eq__(self, other):  # a copy (clone) holds the same function
        return type(self) is type(other) and self.fn is other.fn and self.name == other.name

    __hash__ = object.__hash__


_TYPES = {"Inequality": Inequality, "Positive": Positive, "Negative": Negative,
          "FixedCombinations": FixedCombinations}


def from_dict(d: dict) -> Constraint:
    kind = d["type"]
    args = {k: v for k, v in d.items() if k != "type"}
    return _TYPES[kind](**args)


def check_constraints(constraints, columns) -> list[Constraint]:
    """The constraints parameter as a list, each naming only known columns."""
    if constraints is None:
        return []
    if isinstance(constraints, Constraint):
        constraints = [constraints]
    out = []
    known = set(columns)
    for c in constraints:
        if not isinstance(c, Constraint):
            raise TypeError(f"constraints must be Constraint objects (Inequality, Positive, ...), got {c!r}")
        missing = [x for x in c.columns if x not in known]
        if missing:
            raise ValueError(f"constraint {c.describe()} names columns not in the table: {missing}")
        out.append(c)
    return out


def broken_rows(constraints, df: pd.DataFrame) -> tuple[Constraint, np.ndarray] | None:
    """The first constraint the table breaks and the positions of the rows that break it, or None."""
    for c in constraints:
        bad = np.flatnonzero(~c.holds(df))
        if len(bad):
            return c, bad
    return None
