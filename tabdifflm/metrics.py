"""Quality metrics users can call on their own data (SDMetrics underneath)."""
from __future__ import annotations

import warnings

import pandas as pd

from .schema import infer_schema


def sdmetrics_metadata(df: pd.DataFrame) -> dict:
    """SDMetrics single-table metadata from our schema inference (numerical / categorical / datetime)."""
    kinds = {"numeric": "numerical", "categorical": "categorical", "datetime": "datetime"}
    return {"columns": {str(c.name): {"sdtype": kinds[c.kind]} for c in infer_schema(df).columns}}


def fidelity(synthetic: pd.DataFrame, real_train: pd.DataFrame) -> dict:
    """Column Shapes and Column Pair Trends of SDMetrics' QualityReport, thresholds at 0 (TabSyn-comparable).

    Returns {"column_shapes", "column_pair_trends"} as scores in [0, 1] and the same as TabSyn-style errors
    ``(1 - score) * 100`` under keys ending in ``_error``, plus per-column shape scores.
    """
    from sdmetrics.reports.single_table import QualityReport

    real = real_train.rename(columns=str)
    syn = synthetic.rename(columns=str)[list(real.columns)]
    report = QualityReport()
    prop = report._properties.get("Column Pair Trends")
    if prop is not None:  # SDMetrics >= 0.27 skips weakly related pairs unless these are 0
        prop.real_correlation_threshold = 0
        prop.real_association_threshold = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.generate(real, syn, sdmetrics_metadata(real), verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    shapes = report.get_details("Column Shapes")
    out = {
        "column_shapes": float(props["Column Shapes"]),
        "column_pair_trends": float(props["Column Pair Trends"]),
        "per_column_shape": {r["Column"]: round(float(r["Score"]), 4) for _, r in shapes.iterrows()},
    }
    out["column_shapes_error"] = round((1 - out["column_shapes"]) * 100, 2)
    out["column_pair_trends_error"] = round((1 - out["column_pair_trends"]) * 100, 2)
    return out
