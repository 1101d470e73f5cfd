"""Imputation: fill hidden cells of unseen Adult rows with DiffLM, and use DiffLMImputer in a pipeline.

    python examples/imputation.py [--minutes 3]
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from tabdifflm import DiffLMImputer

ROOT = Path(__file__).resolve().parents[1]
ap = argparse.ArgumentParser()
ap.add_argument("--minutes", type=float, default=3)
ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "adult.csv.gz"))
args = ap.parse_args()

df = pd.read_csv(args.data)
train, new = df.iloc[:1000], df.iloc[1000:1100].reset_index(drop=True)
hidden = np.random.default_rng(0).random(new.shape) < 0.2
holes = new.mask(hidden)

imputer = DiffLMImputer(random_state=0, max_time=args.minutes * 60).fit(train)
filled = imputer.transform(holes)
print(filled.head(8).to_string())
for c in ["education", "occupation", "relationship", "sex"]:
    h = hidden[:, new.columns.get_loc(c)]
    print(f"{c}: {h.sum()} hidden cells, {np.mean(filled.loc[h, c] == new.loc[h, c]):.0%} filled with the true value")
print("observed cells unchanged:", bool(((filled == new) | hidden | new.isna()).all().all()))

# inside a scikit-learn pipeline: the imputer hands a complete table to the next step
numeric = FunctionTransformer(lambda d: d.select_dtypes("number").to_numpy(dtype=float))
pipe = make_pipeline(imputer, numeric)
print("pipeline output:", pipe.transform(holes).shape, "any NaN:", bool(np.isnan(pipe.transform(holes)).any()))
