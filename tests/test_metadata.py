"""metadata=: declared column types (SDV's vocabulary and dicts), keys generated fresh, dropped columns."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tabdifflm import DiffLMImputer, DiffLMSynthesizer
from tabdifflm.metadata import Layout, parse_metadata
from tabdifflm.schema import infer_schema


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(1)
    n = 40
    return pd.DataFrame({
        "user_id": [f"U-{i:05d}" for i in range(1000, 1000 + n)],
        "zip": rng.choice([75001, 10115, 2000], n),           # integer codes, not quantities
        "amount": [f"{v:.2f}" for v in rng.uniform(1, 100, n)],  # numbers held as text
        "day": [f"{d:02d}/03/2021" for d in rng.integers(1, 28, n)],  # dates held as text
        "comment": rng.choice(["ok", "late"], n).astype(object),
        "plan": rng.choice(["a", "b"], n).astype(object),
    })


SDV_DICT = {  # what SDV's Metadata.to_dict() writes for one table
    "METADATA_SPEC_VERSION": "V1",
    "tables": {"orders": {
        "primary_key": "user_id",
        "columns": {"user_id": {"sdtype": "id", "regex_format": "U-[0-9]{5}"},
                    "zip": {"sdtype": "categorical"},
                    "amount": {"sdtype": "numerical", "computer_representation": "Float"},
                    "day": {"sdtype": "datetime", "datetime_format": "%d/%m/%Y"},
                    "comment": {"sdtype": "drop"},
                    "plan": {"sdtype": "categorical"}}}},
    "relationships": [],
}


def test_parse_accepts_sdv_dicts_objects_and_shorthand(table):
    full = parse_metadata(SDV_DICT, table.columns)
    assert full["user_id"]["sdtype"] == "id" and full["day"]["datetime_format"] == "%d/%m/%Y"
    single = parse_metadata(SDV_DICT["tables"]["orders"], table.columns)
    assert single == full

    class FakeSDV:  # SDV's Metadata objects expose to_dict()
        def to_dict(self):
            return SDV_DICT

    assert parse_metadata(FakeSDV(), table.columns) == full
    short = parse_metadata({"zip": "categorical", "user_id": "id", "x": "unknown"}, list(table.columns) + ["x"])
    assert short == {"zip": {"sdtype": "categorical"}, "user_id": {"sdtype": "id"}, "x": {"sdtype": "id"}}


@pytest.mark.parametrize("meta, match", [
    ({"nope": "categorical"}, "columns the table does not have: \\['nope'\\]"),
    ({"zip": "email"}, "column 'zip' has sdtype 'email'"),
    ({"zip": {"type": "categorical"}}, "column 'zip' must be an sdtype"),
    ({"columns": {}, "primary_key": ["zip", "plan"]}, "composite primary key"),
    ({"tables": {"a": {"columns": {}}, "b": {"columns": {}}}}, "describes 2 tables"),
])
def test_bad_metadata_is_named(table, meta, match):
    with pytest.raises(ValueError, match=match):
        parse_metadata(meta, table.columns)


def test_layout_types_and_errors(table):
    lay = Layout.fit(table, SDV_DICT)
    m = lay.model_frame(table)
    assert list(m.columns) == ["zip", "amount", "day", "plan"]  # key and dropped column out
    assert m["amount"].dtype == "float64" and str(m["day"].dtype).startswith("datetime64")
    assert m["day"].iloc[0] == pd.to_datetime(table["day"].iloc[0], format="%d/%m/%Y")
    schema = infer_schema(m, lay.kinds)
    assert [c.kind for c in schema.columns] == ["categorical", "numeric", "datetime", "categorical"]
    assert table["amount"].dtype == object  # the user's frame is never changed
    bad = table.assign(amount=table["amount"].where(table.index != 3, "12,5"))
    with pytest.raises(ValueError, match="column 'amount' is declared numerical but holds '12,5' \\(row 3"):
        lay.model_frame(bad)
    bad = table.assign(day=table["day"].where(table.index != 5, "2021-03-05"))
    with pytest.raises(ValueError, match="column 'day' is declared datetime but '2021-03-05' \\(row 5"):
        lay.model_frame(bad)
    with pytest.raises(ValueError, match="no column to learn"):
        Layout.fit(table[["user_id"]], {"user_id": "id"})
    assert Layout.from_dict(lay.to_dict()) == lay


def test_fit_sample_save_load_with_sdv_metadata(table, tiny_kwargs, tmp_path):
    synth = DiffLMSynthesizer(metadata=SDV_DICT, **tiny_kwargs).fit(table)
    out = synth.sample(25)
    # training order, dropped column left out; keys new and unique in the training keys' style
    assert list(out.columns) == ["user_id", "zip", "amount", "day", "plan"]
    assert out["user_id"].is_unique and not set(out["user_id"]) & set(table["user_id"])
    assert out["user_id"].str.fullmatch(r"U-\d{5}").all()
    assert out["zip"].dtype == table["zip"].dtype and set(out["zip"]) <= set(table["zip"])  # codes, not numbers
    assert out["amount"].dtype == "float64"
    parsed = pd.to_datetime(out["day"], format="%d/%m/%Y")  # text again, in the declared format
    assert parsed.min() >= pd.Timestamp("2021-03-01") and parsed.max() <= pd.Timestamp("2021-03-28")
    assert list(synth.feature_names_in_) == list(table.columns)
    assert synth.encode(table).shape == (len(table), synth.latent_mean_.shape[0])
    path = tmp_path / "m.tdl"
    synth.save(path)
    back = DiffLMSynthesizer.load(path)
    pd.testing.assert_frame_equal(back.sample(5, random_state=3), synth.sample(5, random_state=3))


def test_integer_codes_stay_categories_and_ids_pass_through_imputation(tiny_kwargs):
    rng = np.random.default_rng(2)
    n = 40
    df = pd.DataFrame({"id": np.arange(500, 500 + n), "code": rng.choice([3, 17, 42], n),
                       "x": np.round(rng.normal(size=n), 2)})
    plain = DiffLMSynthesizer(**tiny_kwargs).fit(df)
    assert plain.schema_.columns[1].kind == "numeric"
    imp = DiffLMImputer(metadata={"id": "id", "code": "categorical"}, **tiny_kwargs).fit(df)
    assert imp.schema_.names == ["code", "x"]
    holes = df.copy()
    holes.loc[::3, "code"] = np.nan
    filled = imp.transform(holes)
    assert list(filled.columns) == list(df.columns)
    np.testing.assert_array_equal(filled["id"].to_numpy(), df["id"].to_numpy())  # the user's keys, kept
    assert set(filled["code"]) <= {3, 17, 42} and filled["code"].notna().all()
    keys = imp.sample(10)["id"]
    assert list(keys) == list(range(10)) and keys.dtype == df["id"].dtype
