"""Business rules: rows that never break them, with what each rule cost.

Fits DiffLM on 1,000 Beijing PM2.5 rows for a few minutes with three rules (or loads a saved model and
passes them with ``set_params``), samples, and shows that every row keeps them, which rules the row
grammar holds (nothing written again) and what share of rows had to be written again for the others.

    python examples/rules.py [--minutes 3] [--model beijing.tdl]
"""
import argparse
from pathlib import Path

import pandas as pd

from tabdifflm import DiffLMSynthesizer, Inequality, Positive, Predicate

ROOT = Path(__file__).resolve().parents[1]
ap = argparse.ArgumentParser()
ap.add_argument("--minutes", type=float, default=3)
ap.add_argument("--model", help="a model saved with synth.save(...) on Beijing's columns")
ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "beijing.csv"))
args = ap.parse_args()

df = pd.read_csv(args.data).dropna(subset=["pm2.5"]).drop(columns=["No"], errors="ignore").iloc[:1000]
rules = [
    Inequality("DEWP", "<=", "TEMP"),  # dew point at most the temperature: written into the grammar
    Positive("PRES"),                   # a sign: the column's range is narrowed
    Predicate(lambda d: (d["Is"] == 0) | (d["TEMP"] <= 5), name="snow only when cold", columns=["Is", "TEMP"]),
]
if args.model:
    synth = DiffLMSynthesizer.load(args.model).set_params(constraints=rules)
else:
    synth = DiffLMSynthesizer(random_state=0, max_time=args.minutes * 60, constraints=rules).fit(df)

rows = synth.sample(200, random_state=0)
stats = synth.last_sample_stats_
print(rows.head(8).to_string())
print("every row keeps every rule:", bool(all(r.holds(rows).all() for r in rules)))
print("held in the grammar (never written again):", stats["constraints_in_grammar"])
print(f"share of rows written again for the other rules: {stats['constraint_resampled_share']:.1%}")
print("rows on the bound (TEMP == DEWP):", f"{(rows.TEMP == rows.DEWP).mean():.1%}",
      "| real rows:", f"{(df.TEMP == df.DEWP).mean():.1%}")

try:
    DiffLMSynthesizer(constraints=[Inequality("TEMP", "<", "DEWP")]).fit(df)
except ValueError as e:
    print("a table that breaks a rule is refused:", str(e)[:120])
