"""Class balancing: more rows of a rare class, written by DiffLM under the condition class == c.

Cuts Adult's >50K class to 5 % of 1,000 rows, then trains a classifier on the table as it is and inside an
imbalanced-learn pipeline whose first step is DiffLMOversampler; PR-AUC of the rare class on real test rows.

    python examples/balancing.py [--minutes 3]
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from imblearn.pipeline import make_pipeline
from sklearn.compose import make_column_transformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import OrdinalEncoder

from tabdifflm import DiffLMOversampler, DiffLMSynthesizer

ROOT = Path(__file__).resolve().parents[1]
ap = argparse.ArgumentParser()
ap.add_argument("--minutes", type=float, default=3)
ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "adult.csv.gz"))
args = ap.parse_args()

df = pd.read_csv(args.data)
pool, test = df.iloc[:20000], df.iloc[20000:25000]
rare = pool[pool.income == ">50K"].sample(50, random_state=0)
data = pd.concat([rare, pool[pool.income != ">50K"].sample(950, random_state=0)]).sample(frac=1, random_state=0)
X, y = data.drop(columns="income"), data.income
cats = X.select_dtypes(exclude="number").columns.tolist()


def classifier():
    enc = make_column_transformer((OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), cats),
                                  remainder="passthrough")
    return make_pipeline(enc, HistGradientBoostingClassifier(random_state=0))


def pr_auc(model):
    p = model.predict_proba(test.drop(columns="income"))[:, list(model.classes_).index(">50K")]
    return average_precision_score(test.income == ">50K", p)


plain = classifier().fit(X, y)
oversampler = DiffLMOversampler(sampling_strategy=0.5, random_state=0,
                                synthesizer=DiffLMSynthesizer(max_time=args.minutes * 60, verbose=False))
balanced = make_pipeline(oversampler, classifier()).fit(X, y)   # resampling happens in fit only
print(f"rows of the rare class added: {oversampler.sampling_strategy_}")
print(f"PR-AUC of >50K on {len(test)} real test rows: as it is {pr_auc(plain):.3f}, "
      f"with DiffLM rows {pr_auc(balanced):.3f} (the class's share in the test rows: "
      f"{np.mean(test.income == '>50K'):.3f})")
