import numpy as np
import pandas as pd
import pytest

from tabdifflm.schema import Schema, build_frame, check_frame, frame_rows, infer_schema


def test_infers_kinds_precision_and_missing(mixed_df):
    s = infer_schema(mixed_df)
    kinds = {c.name: (c.kind, c.has_missing) for c in s.columns}
    assert kinds == {"age": ("numeric", False), "income": ("numeric", False), "score": ("numeric", True),
                     "temp": ("numeric", True), "city": ("categorical", False), "member": ("categorical", False),
                     "tier": ("categorical", False), "note": ("categorical", True), "joined": ("datetime", False)}
    cols = {c.name: c for c in s.columns}
    assert cols["age"].is_int and cols["income"].decimals == 2 and cols["temp"].decimals == 1
    assert cols["age"].min >= 18 and cols["age"].max < 80
    assert cols["joined"].dt_format == "%Y-%m-%d"
    assert cols["tier"].declared == ["bronze", "silver", "gold"] and cols["tier"].ordered


def test_rows_and_back_keep_values_and_dtypes(mixed_df):
    s = infer_schema(mixed_df)
    rows = frame_rows(mixed_df, s)
    back = build_frame(rows, s)
    pd.testing.assert_frame_equal(back, mixed_df, check_exact=False, rtol=1e-12)


def test_schema_json_roundtrip(mixed_df):
    import json

    s = infer_schema(mixed_df)
    assert Schema.from_dict(json.loads(json.dumps(s.to_dict()))).to_dict() == s.to_dict()


def test_timezone_and_seconds_survive():
    df = pd.DataFrame({"t": pd.to_datetime(["2021-03-01 10:00:05", "2021-03-02 11:30:00"]).tz_localize("Europe/Paris")})
    s = infer_schema(df)
    assert s.columns[0].dt_format == "%Y-%m-%d %H:%M:%S" and s.columns[0].tz == "Europe/Paris"
    rows = frame_rows(df, s)
    back = build_frame(rows, s)
    pd.testing.assert_frame_equal(back, df)


@pytest.mark.parametrize("df, err, match", [
    (pd.DataFrame(), ValueError, "zero columns"),
    (pd.DataFrame({"a": []}), ValueError, "empty"),
    (pd.DataFrame([[1, 2]], columns=["a", "a"]), ValueError, "duplicate column names"),
    (pd.DataFrame({"a": [1, 2], "b": [np.nan, np.nan]}), ValueError, "'b' is entirely missing"),
    (pd.DataFrame({"z": np.array([1 + 2j, 3j])}), TypeError, "'z'.*complex"),
    (pd.DataFrame({"o": [{"k": 1}, {"k": 2}]}), TypeError, "'o'.*dict"),
    (pd.DataFrame({"d": pd.to_timedelta([1, 2], unit="D")}), TypeError, "'d'"),
    (pd.DataFrame({"x": [1.0, np.inf]}), ValueError, "'x'.*infinite"),
    (pd.DataFrame({"m": [1, "1"]}), ValueError, "'m'.*print the same"),
])
def test_bad_tables_get_clear_errors(df, err, match):
    with pytest.raises(err, match=match):
        infer_schema(df)


def test_not_a_table():
    with pytest.raises(TypeError, match="DataFrame"):
        check_frame([[1, 2]])
    assert list(check_frame(np.zeros((3, 2))).columns) == ["x0", "x1"]


def test_input_is_not_modified(mixed_df):
    before = mixed_df.copy()
    infer_schema(mixed_df)
    frame_rows(mixed_df, infer_schema(mixed_df))
    pd.testing.assert_frame_equal(mixed_df, before)
