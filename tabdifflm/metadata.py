"""Column types the user declares (``metadata=``) where inference guesses wrong, SDV's metadata included.

Inference reads a column's dtype: integers become numbers, strings become categories. Metadata overrides
that per column, with SDV's vocabulary so that SDV users carry their metadata over unchanged:

- ``"categorical"`` / ``"boolean"``: learn the column's values as categories, also integer codes (zip codes,
  product ids); the output keeps the training dtype.
- ``"numerical"``: numbers, also when they arrive as text (``"1,5"`` is not a number: the error names it).
  SDV's ``computer_representation`` ("Int64", "Float", ...) sets the dtype.
- ``"datetime"``: dates, also as text; ``datetime_format`` parses them, and the output writes them back
  as text in that format.
- ``"id"`` (or SDV's ``primary_key``, and SDV's ``"unknown"``): not learned; each sampled row gets a new
  unique key in the training key's style (integers from 0, or text with the keys' common prefix and a
  zero-padded counter), so no real key reaches the output.
- ``"drop"``: kept out of the model and of the output.

Accepted forms: SDV's single-table dict (``{"columns": {...}, "primary_key": ...}``), SDV's multi-table
dict holding one table, any object with ``to_dict()`` returning one of these (SDV's ``Metadata``), or a
shorthand ``{"zip": "categorical", "user_id": "id"}``. Columns not named are inferred.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .schema import _py

SDTYPES = ("categorical", "boolean", "numerical", "datetime", "id", "drop")
_ALIASES = {"unknown": "id"}  # SDV's sdtype for columns it anonymises: keys here, never learned
_SDV_DTYPES = {"Float": "float64", "Int8": "Int8", "Int16": "Int16", "Int32": "Int32", "Int64": "Int64",
               "UInt8": "UInt8", "UInt16": "UInt16", "UInt32": "UInt32", "UInt64": "UInt64"}


def parse_metadata(metadata, columns) -> dict:
    """Normalise ``metadata`` to ``{column: {"sdtype": ..., other keys}}`` for the table's ``columns``.

    Raises TypeError/ValueError naming the problem: an unknown column, an sdtype tabdifflm does not
    generate, a composite key, a multi-table dict with several tables.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) and callable(getattr(metadata, "to_dict", None)):
        metadata = metadata.to_dict()  # SDV's Metadata / SingleTableMetadata objects
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict (or SDV metadata), got {type(metadata).__name__}")
    if "tables" in metadata:
        tables = metadata["tables"]
        if len(tables) != 1:
            raise ValueError(f"metadata describes {len(tables)} tables ({list(tables)}); pass the dict of "
                             "the one table you fit, metadata['tables'][name]")
        metadata = next(iter(tables.values()))
    if "columns" in metadata and isinstance(metadata["columns"], Mapping):
        cols, key = dict(metadata["columns"]), metadata.get("primary_key")
    else:  # shorthand {column: sdtype or {"sdtype": ...}}
        cols, key = dict(metadata), None
    out = {}
    for name, spec in cols.items():
        spec = {"sdtype": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, Mapping) or "sdtype" not in spec:
            raise ValueError(f"metadata for column {name!r} must be an sdtype string or a dict with 'sdtype', "
                             f"got {spec!r}")
        spec = dict(spec)
        spec["sdtype"] = _ALIASES.get(spec["sdtype"], spec["sdtype"])
        if spec["sdtype"] not in SDTYPES:
            raise ValueError(f"column {name!r} has sdtype {spec['sdtype']!r}, which tabdifflm does not generate; "
                             f"use one of {list(SDTYPES)} (e.g. 'id' for new unique values that are never "
                             "learned, or 'drop')")
        out[name] = spec
    if key is not None:
        if isinstance(key, (list, tuple)):
            raise ValueError(f"composite primary key {list(key)} is not supported; declare one 'id' column")
        out[key] = {**out.get(key, {}), "sdtype": "id"}
    unknown = [c for c in out if c not in set(columns)]
    if unknown:
        raise ValueError(f"metadata names columns the table does not have: {unknown}; its columns are "
                         f"{list(columns)}")
    return out


@dataclass
class Layout:
    """How the user's table maps onto the model's columns, and back (plain data, saved with the model).

    ``columns``: the output's columns in training order (dropped ones left out); ``ids``: key columns
    generated fresh ({name: {"kind": "int"|"str", "dtype", "prefix", "width"}}); ``dropped``: columns kept
    out; ``kinds``: the schema overrides ({name: "categorical"|"numerical"|"datetime"}); ``casts``: numeric
    dtypes for text columns declared numerical; ``formats``: text datetime columns and their format.
    """

    columns: list = field(default_factory=list)
    all_columns: list = field(default_factory=list)
    ids: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    kinds: dict = field(default_factory=dict)
    casts: dict = field(default_factory=dict)
    formats: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame, metadata) -> "Layout":
        """The layout of training table ``df`` under ``metadata`` (see :func:`parse_metadata`)."""
        meta = parse_metadata(metadata, df.columns)
        lay = cls(columns=[c for c in df.columns if meta.get(c, {}).get("sdtype") != "drop"],
                  all_columns=list(df.columns),
                  dropped=[c for c in df.columns if meta.get(c, {}).get("sdtype") == "drop"])
        for name, spec in meta.items():
            s, sd = df[name], spec["sdtype"]
            if sd == "id":
                lay.ids[name] = _id_style(name, s)
            elif sd in ("categorical", "boolean"):
                lay.kinds[name] = "categorical"
            elif sd == "numerical":
                lay.kinds[name] = "numerical"
                rep = spec.get("computer_representation")
                if rep is not None and rep not in _SDV_DTYPES:
                    raise ValueError(f"column {name!r}: computer_representation {rep!r} is not one of "
                                     f"{list(_SDV_DTYPES)}")
                if rep is not None or not pd.api.types.is_numeric_dtype(s.dtype):
                    lay.casts[name] = _SDV_DTYPES.get(rep, "float64")
            elif sd == "datetime":
                lay.kinds[name] = "datetime"
                if not pd.api.types.is_datetime64_any_dtype(s.dtype):
                    lay.formats[name] = spec.get("datetime_format")
        if len(lay.columns) == len(lay.ids):
            raise ValueError("metadata leaves no column to learn: every column is an id or dropped")
        return lay

    def model_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """The columns the model learns, typed as declared (a new frame; ``df`` is never changed).
        Columns of the layout absent from ``df`` stay absent (sample_remaining_columns fills them)."""
        keep = [c for c in df.columns if c not in self.ids and c not in self.dropped]
        out = df[keep].copy() if (self.casts or self.formats) else df[keep]
        for name, dtype in self.casts.items():
            if name in out.columns:
                out[name] = _to_number(name, out[name], dtype)
        for name, fmt in self.formats.items():
            if name in out.columns:
                out[name] = _to_datetime(name, out[name], fmt)
        return out

    def restore(self, frame: pd.DataFrame, known: pd.DataFrame | None = None, start: int = 0) -> pd.DataFrame:
        """Model rows -> the user's table: text dates written back, fresh keys (or ``known``'s own, and
        ``known``'s dropped columns passed through), columns in training order."""
        out = frame.copy() if self.formats or self.ids or self.dropped else frame
        for name, fmt in self.formats.items():
            s = out[name]
            text = s.dt.strftime(fmt) if fmt else s.astype(str)
            out[name] = text.where(s.notna(), None).astype(object)
        for name, style in self.ids.items():
            if known is not None and name in known.columns:
                out[name] = known[name].to_numpy()
            else:
                out[name] = _new_keys(style, len(out), start)
        passed = [c for c in self.dropped if known is not None and c in known.columns]
        for name in passed:
            out[name] = known[name].to_numpy()
        return out[[c for c in self.all_columns if c in set(self.columns) | set(passed)]]

    @classmethod
    def identity(cls, columns) -> "Layout":
        """Every column learnt as inferred (no metadata; models saved before metadata existed)."""
        return cls(columns=list(columns), all_columns=list(columns))

    _MAPS = ("ids", "kinds", "casts", "formats")

    def to_dict(self) -> dict:
        # maps as [name, value] pairs: JSON would turn integer column names into strings as keys
        return {"columns": self.columns, "all_columns": self.all_columns, "dropped": self.dropped,
                **{k: [[name, v] for name, v in getattr(self, k).items()] for k in self._MAPS}}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(columns=list(d["columns"]), all_columns=list(d["all_columns"]), dropped=list(d["dropped"]),
                   **{k: {name: v for name, v in d[k]} for k in cls._MAPS})


def _id_style(name, s: pd.Series) -> dict:
    present = s.dropna()
    numeric = pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)
    if numeric and (pd.api.types.is_integer_dtype(s.dtype) or bool((present == present.round()).all())):
        return {"kind": "int", "dtype": str(s.dtype)}
    texts = present.astype(str).tolist()
    prefix = re.sub(r"\d+$", "", _common_prefix(texts))  # the counter's own leading digits are not prefix
    digits = [len(m.group()) for t in texts if (m := re.search(r"\d+$", t[len(prefix):]))]
    return {"kind": "str", "dtype": str(s.dtype), "prefix": prefix, "width": max(digits, default=0)}


def _common_prefix(texts: list) -> str:
    if not texts:
        return ""
    lo, hi = min(texts), max(texts)
    i = 0
    while i < min(len(lo), len(hi)) and lo[i] == hi[i]:
        i += 1
    return lo[:i]


def _new_keys(style: dict, n: int, start: int):
    k = np.arange(start, start + n)
    if style["kind"] == "int":
        return pd.array(k, dtype=style["dtype"]) if style["dtype"][0] in "IU" else k.astype(style["dtype"])
    width = max(style.get("width", 0), len(str(start + n - 1)))
    return np.array([f"{style['prefix']}{i:0{width}d}" for i in k], dtype=object)


def _to_number(name, s: pd.Series, dtype: str) -> pd.Series:
    x = pd.to_numeric(s, errors="coerce") if not pd.api.types.is_numeric_dtype(s.dtype) else s
    bad = s.notna() & pd.isna(x)
    if bad.any():
        raise ValueError(f"column {name!r} is declared numerical but holds {s[bad].iloc[0]!r} (row "
                         f"{_py(s.index[bad][0])!r}, {int(bad.sum())} such cells)")
    try:
        return x.astype(dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"column {name!r}: its values do not fit dtype {dtype}: {e}") from e


def _to_datetime(name, s: pd.Series, fmt) -> pd.Series:
    t = pd.to_datetime(s, format=fmt, errors="coerce")
    bad = s.notna() & t.isna()
    if bad.any():
        want = f"the format {fmt!r}" if fmt else "a date"
        raise ValueError(f"column {name!r} is declared datetime but {s[bad].iloc[0]!r} (row "
                         f"{_py(s.index[bad][0])!r}, {int(bad.sum())} such cells) is not {want}")
    return t
