"""Quickstart: fit DiffLM on 2,000 Adult rows with the default pretrained models, sample 1,000 rows.

    python examples/quickstart.py [--rows 2000] [--samples 1000] [--minutes 20]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import fidelity

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=2000)
ap.add_argument("--samples", type=int, default=1000)
ap.add_argument("--minutes", type=float, default=20, help="fit time budget")
ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "adult.csv.gz"))
ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quickstart.json"))
args = ap.parse_args()

df = pd.read_csv(args.data).iloc[:args.rows]
synth = DiffLMSynthesizer(random_state=0, max_time=args.minutes * 60)

t = time.monotonic()
synth.fit(df)
fit_s = time.monotonic() - t

t = time.monotonic()
out = synth.sample(args.samples)
sample_s = time.monotonic() - t

synth.save("adult.tdl")
again = DiffLMSynthesizer.load("adult.tdl")

pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 20)
print(out.head(10))
assert list(out.columns) == list(df.columns) and (out.dtypes == df.dtypes).all() and len(out) == args.samples
fid = fidelity(out, df)
stats = synth.last_sample_stats_
vae = synth.history_["vae"]
summary = {
    "rows": args.rows, "samples": args.samples, "fit_seconds": round(fit_s, 1), "sample_seconds": round(sample_s, 1),
    "rows_per_second": round(args.samples / sample_s, 2), "first_try_valid_share": stats["first_try_valid_share"],
    "vae_steps": vae[-1]["step"], "val_nll_first": vae[0]["val_nll"], "val_nll_best": min(v["val_nll"] for v in vae),
    "column_shapes": round(fid["column_shapes"], 4), "column_pair_trends": round(fid["column_pair_trends"], 4),
    "column_shapes_error": fid["column_shapes_error"], "column_pair_trends_error": fid["column_pair_trends_error"],
    "per_column_shape": fid["per_column_shape"],
}
print(json.dumps(summary, indent=1))
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps(summary, indent=1))
print(f"fit {fit_s / 60:.1f} min, sample {sample_s / 60:.1f} min, saved adult.tdl", file=sys.stderr)
