"""Rows to text and back.

Two formats, both described by the same three things so the token grammar can force their structure:
literal text around the values, how one value is written, and how a missing value is written.

- ``"values"`` (default): ``39,State-gov,77516,...\\n``. Only what varies is written; the column order
  is fixed, so the frozen LLM never spends tokens (or training signal) on keys, quotes or braces.
  Backslash escapes keep commas, newlines and backslashes inside values unambiguous; an empty field is
  a missing value and ``\\e`` is the empty string.
- ``"json"``: the DiffLM paper's ``json.dumps(row)``: ``{"age": 39, "workclass": "State-gov", ...}``.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from .schema import ColumnSpec, Schema

FORMATS = ("values", "json")
NUMBER_FORMATS = ("plain", "fixed")


class ParseError(ValueError):
    """A text that is not a valid row of the schema."""


def format_number(x: float, col: ColumnSpec, fixed: bool = False) -> str:
    """Canonical text of a number: integers plainly, floats with exactly ``col.decimals`` decimals.

    ``fixed=True`` zero-pads the integer part to the column's widest integer part (per sign, see
    :func:`int_widths`), so the first digit the decoder writes is always the most significant one
    (``77516`` in a column up to 1,490,400 becomes ``0077516``).
    """
    if col.is_int:
        s = str(int(x))  # exact: int64 values beyond 2**53 do not survive a float
    elif col.decimals == 0:
        s = str(int(round(float(x))))
    else:
        s = f"{float(x):.{col.decimals}f}"
        if s.startswith("-") and float(s) == 0:
            s = s[1:]
    if fixed:
        neg = s.startswith("-")
        body = s[1:] if neg else s
        ip, dot, frac = body.partition(".")
        s = ("-" if neg else "") + ip.zfill(int_widths(col)[neg]) + dot + frac
    return s


def int_widths(col: ColumnSpec) -> dict[bool, int]:
    """Digits of the widest integer part of the column's non-negative (False) and negative (True) values."""
    if col.is_int:
        lo, hi = int(col.min), int(col.max)
        return {False: len(str(max(hi, 0))), True: len(str(max(-lo, 0)))}
    p = col.decimals
    lo, hi = round(col.min * 10 ** p), round(col.max * 10 ** p)
    return {False: len(str(max(hi, 0) // 10 ** p)), True: len(str(max(-lo, 0) // 10 ** p))}


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def datetime_text(ns: int, col: ColumnSpec) -> str:
    """Epoch nanoseconds (UTC, naive) -> text in the column's format (integer arithmetic: microseconds
    exact; nanoseconds below them are dropped)."""
    return (_EPOCH + timedelta(microseconds=int(ns) // 1000)).strftime(col.dt_format)


def parse_datetime(text: str, col: ColumnSpec) -> int:
    """Text in the column's format -> epoch nanoseconds; ValueError if it is no real date."""
    d = datetime.strptime(text, col.dt_format).replace(tzinfo=timezone.utc) - _EPOCH
    return ((d.days * 86400 + d.seconds) * 10**6 + d.microseconds) * 1000


def _escape(s: str) -> str:
    if s == "":
        return "\\e"
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("\n", "\\n").replace("\r", "\\r")


def _unescape(s: str) -> str:
    if s == "\\e":
        return ""
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            if i + 1 >= len(s):
                raise ParseError(f"dangling backslash in {s!r}")
            nxt = s[i + 1]
            out.append({"n": "\n", "r": "\r", "\\": "\\", ",": ","}.get(nxt))
            if out[-1] is None:
                raise ParseError(f"unknown escape \\{nxt} in {s!r}")
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _split_fields(body: str) -> list[str]:
    fields, cur, i = [], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            cur.append(body[i:i + 2])
            i += 2
            continue
        if ch == ",":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    fields.append("".join(cur))
    return fields


def is_missing(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and math.isnan(v))


class RowFormat:
    """How rows of one schema are written: ``literals()[i]`` comes before column i, the last after the last."""

    def __init__(self, name: str, schema: Schema, number_format: str = "plain"):
        if name not in FORMATS:
            raise ValueError(f"unknown serialisation format {name!r}; choose one of {FORMATS}")
        if number_format not in NUMBER_FORMATS:
            raise ValueError(f"unknown number format {number_format!r}; choose one of {NUMBER_FORMATS}")
        if name == "json" and number_format == "fixed":
            raise ValueError("number_format='fixed' needs serialization='values': JSON has no zero-padded numbers")
        self.name = name
        self.fixed_width = number_format == "fixed"
        self.schema = schema
        self.missing_text = "" if name == "values" else "NaN"
        self._lookup = [{self.category_text(c, v): v for v in c.categories} for c in schema.columns]

    def literals(self) -> list[str]:
        names = self.schema.names
        if self.name == "values":
            return [""] + [","] * (len(names) - 1) + ["\n"]
        keys = [json.dumps(str(n), ensure_ascii=False) for n in names]
        return ["{" + keys[0] + ": "] + [", " + k + ": " for k in keys[1:]] + ["}"]

    def category_text(self, col: ColumnSpec, v) -> str:
        if self.name == "values":
            return _escape(str(v))
        return json.dumps(v, ensure_ascii=False)

    def datetime_wrap(self) -> tuple[str, str]:
        return ("", "") if self.name == "values" else ('"', '"')

    def value_text(self, col: ColumnSpec, v) -> str:
        """Text of one value of column ``col`` (datetimes as epoch ns)."""
        if is_missing(v):
            return self.missing_text
        if col.kind == "numeric":
            return format_number(v, col, self.fixed_width)
        if col.kind == "datetime":
            a, b = self.datetime_wrap()
            return a + datetime_text(int(v), col) + b
        return self.category_text(col, v)

    def serialise(self, row) -> str:
        """One row (sequence of values in schema order) -> text."""
        lits = self.literals()
        parts = [lits[0]]
        for i, (col, v) in enumerate(zip(self.schema.columns, row)):
            parts.append(self.value_text(col, v))
            parts.append(lits[i + 1])
        return "".join(parts)

    def parse_value(self, i: int, text: str):
        """Text of column i -> value (None when missing); ParseError when invalid for the schema."""
        col = self.schema.columns[i]
        if text == self.missing_text:
            if not col.has_missing:
                raise ParseError(f"column {col.name!r} is missing but never was in training")
            return None
        try:
            if col.kind == "numeric":
                if col.is_int:
                    return int(text)
                x = float(text)
                if not math.isfinite(x):
                    raise ValueError(text)
                return x
            if col.kind == "datetime":
                a, b = self.datetime_wrap()
                if not (text.startswith(a) and text.endswith(b)) or len(text) < len(a) + len(b):
                    raise ValueError(text)
                return parse_datetime(text[len(a):len(text) - len(b)], col)
        except ValueError as e:
            raise ParseError(f"column {col.name!r}: cannot read {text!r}") from e
        if text not in self._lookup[i]:
            raise ParseError(f"column {col.name!r}: {text!r} is not a known category")
        return self._lookup[i][text]

    def parse(self, text: str) -> list:
        """Text -> list of values in schema order; ParseError when it is not a valid row."""
        n = len(self.schema)
        if self.name == "values":
            if not text.endswith("\n"):
                raise ParseError("row does not end with a newline")
            fields = _split_fields(text[:-1])
            if len(fields) != n:
                raise ParseError(f"expected {n} fields, got {len(fields)}")
            out = []
            for i, f in enumerate(fields):
                col = self.schema.columns[i]
                if col.kind == "categorical" and f != self.missing_text:
                    try:
                        f = self.category_text(col, _unescape(f))
                    except ParseError as e:
                        raise ParseError(f"column {col.name!r}: {e}") from e
                out.append(self.parse_value(i, f))
            return out
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParseError(f"not JSON: {e}") from e
        if not isinstance(obj, dict) or list(obj) != [str(c) for c in self.schema.names]:
            raise ParseError("JSON keys do not match the columns")
        out = []
        for i, (col, v) in enumerate(zip(self.schema.columns, obj.values())):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out.append(self.parse_value(i, self.missing_text))
            elif col.kind == "categorical":
                out.append(self.parse_value(i, json.dumps(v, ensure_ascii=False)))
            elif col.kind == "datetime":
                out.append(self.parse_value(i, json.dumps(v)))
            else:
                out.append(self.parse_value(i, json.dumps(v)))
        return out


def encoder_text(schema: Schema, row) -> str:
    """Natural "name: value" text for the encoder, which understands words better than bare values."""
    parts = []
    for col, v in zip(schema.columns, row):
        if is_missing(v):
            t = "missing"
        elif col.kind == "numeric":
            t = format_number(v, col)
        elif col.kind == "datetime":
            t = datetime_text(int(v), col)
        else:
            t = str(v)
        parts.append(f"{col.name}: {t}")
    return ", ".join(parts)
