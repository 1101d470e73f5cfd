"""Paths and protocol splits of the shared benchmark datasets (REFERENCE.md section 3)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

SHARED = Path(os.environ.get("TABDIFFLM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
ADULT_TRAIN_ROWS = 32561


def adult_train() -> pd.DataFrame:
    """Adult's official training rows (the first 32,561 of adult.csv.gz)."""
    return pd.read_csv(SHARED / "datasets" / "adult.csv.gz").iloc[:ADULT_TRAIN_ROWS].reset_index(drop=True)
