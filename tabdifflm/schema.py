"""Table schema: what each column holds, inferred from a DataFrame, and how to rebuild its dtypes.

A schema is plain data (JSON-serialisable) so it can be stored inside a saved model without pickle.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

# Floats are written with at most this many decimals; finer detail is rounded away.
MAX_DECIMALS = 6
SIGNIFICANT_DIGITS = 7  # for columns of small numbers (all below 1), digits kept of the largest value
MAX_SCALED_DECIMALS = 24


@dataclass
class ColumnSpec:
    """One column: its kind (numeric, categorical, datetime), its dtype and what values it takes.

    numeric: ``is_int``, ``decimals`` (observed precision), ``min``/``max`` (observed range).
    categorical: ``categories`` (every observed value, in first-seen order).
    datetime: ``dt_format`` (strftime pattern that holds every value exactly), ``min``/``max`` (epoch ns), ``tz``.
    """

    name: object
    kind: str
    dtype: str
    has_missing: bool = False
    is_int: bool = False
    decimals: int = 0
    min: float | None = None
    max: float | None = None
    categories: list = field(default_factory=list)
    ordered: bool = False
    declared: list | None = None  # a category dtype's declared categories (may include unseen ones)
    dt_format: str | None = None
    tz: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ColumnSpec":
        return cls(**d)


@dataclass
class Schema:
    columns: list[ColumnSpec]

    @property
    def names(self) -> list:
        return [c.name for c in self.columns]

    @property
    def categorical(self) -> list[int]:
        """Positions of the categorical columns."""
        return [i for i, c in enumerate(self.columns) if c.kind == "categorical"]

    def to_dict(self) -> dict:
        return {"columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, d: dict) -> "Schema":
        return cls([ColumnSpec.from_dict(c) for c in d["columns"]])

    def __len__(self) -> int:
        return len(self.columns)


def check_frame(df) -> pd.DataFrame:
    """Validate the user's table and return it as a DataFrame (never modified in place).

    Raises ValueError/TypeError naming the problem: not a table, no rows, no columns, duplicate names.
    """
    if isinstance(df, np.ndarray):
        if df.ndim != 2:
            raise ValueError(f"expected a 2-D table, got an array with {df.ndim} dimension(s)")
        df = pd.DataFrame(df, columns=[f"x{i}" for i in range(df.shape[1])])
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if df.shape[1] == 0:
        raise ValueError("the table has zero columns")
    if df.shape[0] == 0:
        raise ValueError("the table is empty (zero rows)")
    dupes = df.columns[df.columns.duplicated()].tolist()
    if dupes:
        raise ValueError(f"duplicate column names: {dupes}")
    for name in df.columns:
        if not isinstance(name, (str, int, np.integer)) or isinstance(name, bool):
            raise TypeError(f"column name {name!r} must be a string or an integer")
    return df


def _decimals(x: np.ndarray) -> int:
    """Smallest number of decimals that holds every value of x, at most MAX_DECIMALS or, for a column
    whose values are all below 1, as many as keep SIGNIFICANT_DIGITS of its largest value (values of
    1e-12 keep their digits instead of rounding to zero)."""
    top = float(np.max(np.abs(x))) if len(x) else 0.0
    limit = MAX_DECIMALS
    if 0 < top < 1:
        limit = min(max(MAX_DECIMALS, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(top))), MAX_SCALED_DECIMALS)
    for p in range(limit + 1):
        if np.all(np.abs(np.round(x, p) - x) <= 1e-12 * np.abs(x)):  # float noise only, never real digits
            return p
    return limit


_CATEGORY_TYPES = (str, bool, np.bool_, int, np.integer, float, np.floating)


def _py(v):
    """Numpy scalar -> plain Python value (so categories are JSON-serialisable)."""
    return v.item() if isinstance(v, np.generic) else v


def _infer_column(name, s: pd.Series, kind: str | None = None) -> ColumnSpec:
    dtype = s.dtype
    missing = s.isna()
    if missing.all():
        raise ValueError(f"column {name!r} is entirely missing; drop it or fill it")
    has_missing = bool(missing.any())
    present = s[~missing]

    if pd.api.types.is_complex_dtype(dtype):
        raise TypeError(f"column {name!r} has unsupported dtype {dtype} (complex numbers)")
    if pd.api.types.is_timedelta64_dtype(dtype) or isinstance(dtype, (pd.PeriodDtype, pd.IntervalDtype)):
        raise TypeError(f"column {name!r} has unsupported dtype {dtype}")

    if kind == "categorical" and pd.api.types.is_datetime64_any_dtype(dtype):
        raise TypeError(f"column {name!r} holds datetimes; declare it 'datetime', not 'categorical'")
    if kind == "numerical" and not pd.api.types.is_numeric_dtype(dtype):
        raise TypeError(f"column {name!r} is declared numerical but has dtype {dtype}")
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype) or kind == "categorical" or \
            pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        cats, seen = [], set()
        for v in present:
            if not isinstance(v, _CATEGORY_TYPES):
                raise TypeError(f"column {name!r} holds an unsupported value {v!r} of type {type(v).__name__}; "
                                "use strings, numbers or booleans")
            if isinstance(v, (float, np.floating)) and not math.isfinite(v):
                raise ValueError(f"column {name!r} holds a non-finite value {v!r}")
            key = (type(_py(v)).__name__, _py(v))
            if key not in seen:
                seen.add(key)
                cats.append(_py(v))
        texts = [str(c) for c in cats]
        if len(set(texts)) != len(texts):
            dup = next(t for t in texts if texts.count(t) > 1)
            raise ValueError(f"column {name!r} holds distinct values that print the same ({dup!r}); "
                             "convert the column to one type")
        ordered = bool(dtype.ordered) if isinstance(dtype, pd.CategoricalDtype) else False
        declared = None
        if isinstance(dtype, pd.CategoricalDtype):
            declared = [_py(c) for c in dtype.categories]
            # keep the declared category order, restricted to the values seen
            order = {_py(c): i for i, c in enumerate(dtype.categories)}
            cats.sort(key=lambda c: order.get(c, len(order)))
        return ColumnSpec(name=_py(name), kind="categorical", dtype=str(dtype), has_missing=has_missing,
                          categories=cats, ordered=ordered, declared=declared)

    if pd.api.types.is_datetime64_any_dtype(dtype):
        tz = str(dtype.tz) if getattr(dtype, "tz", None) is not None else None
        naive = present.dt.tz_convert("UTC").dt.tz_localize(None) if tz else present
        if (naive == naive.dt.normalize()).all():
            fmt = "%Y-%m-%d"
        elif (naive.dt.second == 0).all() and (naive.dt.microsecond == 0).all():
            fmt = "%Y-%m-%d %H:%M"
        elif (naive.dt.microsecond == 0).all():
            fmt = "%Y-%m-%d %H:%M:%S"
        else:  # sub-second values keep their microseconds
            fmt = "%Y-%m-%d %H:%M:%S.%f"
        ns = naive.astype("datetime64[ns]").astype("int64")
        return ColumnSpec(name=_py(name), kind="datetime", dtype=str(dtype), has_missing=has_missing,
                          dt_format=fmt, tz=tz, min=float(ns.min()), max=float(ns.max()))

    if pd.api.types.is_numeric_dtype(dtype):
        x = present.to_numpy(dtype="float64")
        if not np.isfinite(x).all():
            raise ValueError(f"column {name!r} holds infinite values")
        is_int = pd.api.types.is_integer_dtype(dtype)
        if is_int:  # exact Python ints: int64 values beyond 2**53 do not survive a float
            ints = [int(v) for v in present.astype(object)]
            return ColumnSpec(name=_py(name), kind="numeric", dtype=str(dtype), has_missing=has_missing,
                              is_int=True, decimals=0, min=min(ints), max=max(ints))
        return ColumnSpec(name=_py(name), kind="numeric", dtype=str(dtype), has_missing=has_missing,
                          is_int=False, decimals=_decimals(x), min=float(x.min()), max=float(x.max()))

    raise TypeError(f"column {name!r} has unsupported dtype {dtype}")


def infer_schema(df: pd.DataFrame, kinds: dict | None = None) -> Schema:
    """Infer a :class:`Schema` from a DataFrame (checked with :func:`check_frame` first).

    ``kinds`` {column: "categorical" | "numerical" | "datetime"} overrides what the dtype says, e.g. integer
    codes learnt as categories (the output keeps their dtype).
    """
    df = check_frame(df)
    kinds = kinds or {}
    return Schema([_infer_column(name, df[name], kinds.get(name)) for name in df.columns])


def build_frame(rows: list, schema: Schema) -> pd.DataFrame:
    """Rows of plain Python values in schema order -> DataFrame with the schema's columns and dtypes.

    The inverse of :func:`frame_rows`: None for missing, datetimes as epoch ns ints.
    """
    out = {}
    for i, c in enumerate(schema.columns):
        vals = [r[i] for r in rows]
        n = len(vals)
        if c.kind == "numeric" and c.is_int and c.dtype in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16",
                                                            "UInt32", "UInt64"):
            out[c.name] = pd.array(vals, dtype=c.dtype)  # exact Python ints, None -> <NA>
        elif c.kind == "numeric" and c.is_int and None not in vals:
            out[c.name] = np.array(vals, dtype=c.dtype)  # exact, also beyond 2**53
        elif c.kind == "numeric":
            x = np.array([np.nan if v is None else v for v in vals], dtype="float64")
            if c.dtype in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32",
                           "Float64"):
                out[c.name] = pd.array([None if np.isnan(v) else v for v in x], dtype=c.dtype)
            else:
                out[c.name] = x.astype(c.dtype) if not np.isnan(x).any() else x
        elif c.kind == "datetime":
            ns = pd.array([None if v is None else int(v) for v in vals], dtype="Int64")
            s = pd.to_datetime(pd.Series(ns, dtype="Int64").astype("float64"), unit="ns")
            if c.tz:
                s = s.dt.tz_localize("UTC").dt.tz_convert(c.tz)
            out[c.name] = s.astype(c.dtype).to_numpy() if not c.tz else s.array
        else:
            if c.dtype == "bool":
                out[c.name] = np.array(vals, dtype=bool) if n and None not in vals else np.array(vals, dtype=object)
            elif c.dtype == "boolean":
                out[c.name] = pd.array(vals, dtype="boolean")
            elif c.dtype == "category":
                out[c.name] = pd.Categorical(vals, categories=_categories_of(c), ordered=c.ordered)
            elif c.dtype.startswith("string"):
                out[c.name] = pd.array([None if v is None else v for v in vals], dtype=c.dtype)
            elif c.dtype in _NUMERIC_DTYPES:  # numeric codes learnt as categories
                out[c.name] = _numeric_codes(vals, c.dtype)
            else:
                out[c.name] = np.array([np.nan if v is None else v for v in vals] if n else [], dtype=object)
    return pd.DataFrame(out, columns=schema.names)


_NUMERIC_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
                   "float64", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32",
                   "Float64"}


def _numeric_codes(vals: list, dtype: str):
    """Categories that are numbers, back in their column's dtype (a missing value turns numpy ints into the
    nullable Int64 and leaves floats as NaN)."""
    if dtype[0] in "IUF":
        return pd.array(vals, dtype=dtype)
    if None not in vals:
        return np.array(vals, dtype=dtype)
    if dtype.startswith(("int", "uint")):
        return pd.array(vals, dtype="Int64")
    return np.array([np.nan if v is None else v for v in vals], dtype=dtype)


def _categories_of(c: ColumnSpec) -> list:
    return list(c.declared) if c.declared is not None else list(c.categories)


def frame_rows(df: pd.DataFrame, schema: Schema) -> list[list]:
    """DataFrame -> list of rows of plain Python values in schema order.

    Missing -> None; datetimes -> epoch nanoseconds (UTC); categories -> the schema's own objects.
    """
    cols = []
    for c in schema.columns:
        s = df[c.name]
        miss = s.isna().to_numpy()
        if c.kind == "numeric" and c.is_int:  # exact, also beyond 2**53
            v = [None if m else int(x) for x, m in zip(s.astype(object).to_numpy(), miss)]
        elif c.kind == "numeric":
            vals = s.to_numpy(dtype="float64", na_value=np.nan)
            v = [None if m else float(x) for x, m in zip(vals, miss)]
        elif c.kind == "datetime":
            naive = s.dt.tz_convert("UTC").dt.tz_localize(None) if c.tz else s
            ns = naive.astype("datetime64[ns]").to_numpy().astype("int64")
            v = [None if m else int(x) for x, m in zip(ns, miss)]
        else:
            v = [None if m else _py(x) for x, m in zip(s.astype(object).to_numpy(), miss)]
        cols.append(v)
    return [list(r) for r in zip(*cols)]
