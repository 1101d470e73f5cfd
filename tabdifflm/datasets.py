"""Benchmark datasets with the papers' splits (REFERENCE.md section 3), and the same for any CSV."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ADULT_TRAIN_ROWS = 32561
BENCHMARKS = {
    "adult": {"file": "adult.csv.gz", "target": "income", "task": "classification"},
    "magic": {"file": "magic.csv", "target": "class", "task": "classification"},
    "beijing": {"file": "beijing.csv", "target": "pm2.5", "task": "regression"},
}


@dataclass
class Dataset:
    """A table split for evaluation: ``train`` to fit on, ``test`` for MLE; ``target`` and ``task``."""

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    target: str
    task: str

    def dcr_split(self, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Equal-size halves of ``train`` (fit on the first, the second is the DCR holdout)."""
        idx = np.random.default_rng(seed).permutation(len(self.train))
        half = len(idx) // 2
        return (self.train.iloc[idx[:half]].reset_index(drop=True),
                self.train.iloc[idx[half:2 * half]].reset_index(drop=True))


def default_root() -> Path:
    """``$TABDIFFLM_DATA`` or the project's ``../shared/datasets``."""
    env = os.environ.get("TABDIFFLM_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _categorical_columns(df: pd.DataFrame) -> list:
    return [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])]


def split_holding_all_categories(df: pd.DataFrame, test_size: float = 0.1, seed: int = 1234,
                                 max_tries: int = 100) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random train/test split; reseed (seed, seed+1, ...) until train holds every category of every column."""
    cats = _categorical_columns(df)
    n_test = int(round(len(df) * test_size))
    for k in range(max_tries):
        idx = np.random.default_rng(seed + k).permutation(len(df))
        train, test = df.iloc[idx[n_test:]], df.iloc[idx[:n_test]]
        if all(set(test[c].dropna()) <= set(train[c].dropna()) for c in cats):
            return train.reset_index(drop=True), test.reset_index(drop=True)
    raise ValueError(f"no split in {max_tries} tries puts every category in the training part")


def load_csv(path, target: str, task: str, test_size: float = 0.1, seed: int = 1234, name: str | None = None,
             drop: list | None = None) -> Dataset:
    """Any CSV as a :class:`Dataset`: drop ``drop`` columns and rows without a target, split 90/10 (seed 1234)."""
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    df = pd.read_csv(path)
    if target not in df.columns:
        raise ValueError(f"target column {target!r} is not in {path}; columns: {list(df.columns)}")
    df = df.drop(columns=drop or []).dropna(subset=[target]).reset_index(drop=True)
    train, test = split_holding_all_categories(df, test_size, seed)
    return Dataset(name or Path(path).stem, train, test, target, task)


def load_benchmark(name: str, root=None) -> Dataset:
    """Adult (official split), MAGIC (90/10, seed 1234) or Beijing (drop ``No`` and rows without pm2.5; 90/10)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    path = Path(root or default_root()) / spec["file"]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; set TABDIFFLM_DATA to the folder holding {spec['file']}")
    if name == "adult":
        df = pd.read_csv(path)
        return Dataset(name, df.iloc[:ADULT_TRAIN_ROWS].reset_index(drop=True),
                       df.iloc[ADULT_TRAIN_ROWS:].reset_index(drop=True), spec["target"], spec["task"])
    return load_csv(path, spec["target"], spec["task"], name=name, drop=["No"] if name == "beijing" else None)
