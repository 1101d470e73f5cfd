import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tabdifflm.schema import frame_rows, infer_schema
from tabdifflm.serialization import ParseError, RowFormat, encoder_text


def _same(a, b):
    if a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b and type(a) is type(b)


rows_strategy = st.lists(
    st.tuples(
        st.one_of(st.none(), st.text(max_size=12)),                       # any unicode, quotes, commas, newlines
        st.integers(-10**15, 10**15),                                     # large and negative ints
        st.one_of(st.none(), st.floats(-1e9, 1e9, allow_nan=False).map(lambda x: round(x, 3))),
        st.booleans(),
    ),
    min_size=1, max_size=8,
)


@pytest.mark.parametrize("fmt_name, numbers", [("values", "plain"), ("values", "fixed"), ("json", "plain")])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy)
def test_parse_inverts_serialise(fmt_name, numbers, rows):
    df = pd.DataFrame(rows, columns=["text", "big", "x", "flag"])
    df["text"] = df["text"].astype(object)
    if df["text"].isna().all() or df["x"].isna().all():
        return  # an entirely missing column is rejected at fit time (tested elsewhere)
    schema = infer_schema(df)
    fmt = RowFormat(fmt_name, schema, numbers)
    for row in frame_rows(df, schema):
        text = fmt.serialise(row)
        back = fmt.parse(text)
        assert all(_same(a, b) for a, b in zip(row, back)), (row, text, back)


def test_values_format_is_compact_and_escaped():
    df = pd.DataFrame({"a": [39, 50], "b": ["State-gov", "x,y\nz\\"], "c": [1.5, np.nan]})
    fmt = RowFormat("values", infer_schema(df))
    rows = frame_rows(df, fmt.schema)
    assert fmt.serialise(rows[0]) == "39,State-gov,1.5\n"
    assert fmt.serialise(rows[1]) == "50,x\\,y\\nz\\\\,\n"
    assert fmt.parse(fmt.serialise(rows[1])) == [50, "x,y\nz\\", None]


def test_json_format_is_the_papers():
    import json

    df = pd.DataFrame({"age": [39], "workclass": ["State-gov"]})
    fmt = RowFormat("json", infer_schema(df))
    text = fmt.serialise(frame_rows(df, fmt.schema)[0])
    assert json.loads(text) == {"age": 39, "workclass": "State-gov"}


@pytest.mark.parametrize("text, match", [
    ("39,Unknown-gov,1.5\n", "not a known category"),
    ("39,State-gov\n", "expected 3 fields"),
    ("39,State-gov,1.5", "newline"),
    ("abc,State-gov,1.5\n", "cannot read"),
])
def test_parse_rejects_bad_rows(text, match):
    df = pd.DataFrame({"a": [39, 50], "b": ["State-gov", "Private"], "c": [1.5, 2.0]})
    fmt = RowFormat("values", infer_schema(df))
    with pytest.raises(ParseError, match=match):
        fmt.parse(text)


def test_encoder_text_names_columns(mixed_df):
    s = infer_schema(mixed_df)
    t = encoder_text(s, frame_rows(mixed_df, s)[0])
    assert t.startswith("age: ") and "joined: 20" in t and "score: missing" in t


def test_fixed_width_numbers_put_the_magnitude_first():
    df = pd.DataFrame({"a": [7, 1490400], "b": [-12.5, 3.25], "c": [-0.5, -130.0]})
    fmt = RowFormat("values", infer_schema(df), "fixed")
    rows = frame_rows(df, fmt.schema)
    assert fmt.serialise(rows[0]) == "0000007,-12.50,-000.5\n"
    assert fmt.serialise(rows[1]) == "1490400,3.25,-130.0\n"  # widths are per sign
    assert fmt.parse(fmt.serialise(rows[0])) == rows[0]


def test_fixed_width_needs_the_values_format():
    with pytest.raises(ValueError, match="needs serialization='values'"):
        RowFormat("json", infer_schema(pd.DataFrame({"a": [1]})), "fixed")
