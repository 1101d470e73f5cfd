"""Shortcuts to the shared benchmark data for the benchmark scripts."""
from __future__ import annotations

import pandas as pd

from tabdifflm.datasets import load_benchmark


def adult_train() -> pd.DataFrame:
    """Adult's official training rows (the first 32,561 of adult.csv.gz)."""
    return load_benchmark("adult").train
