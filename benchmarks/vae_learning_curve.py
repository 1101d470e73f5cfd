"""VAE learning curve: validation reconstruction NLL per row (nats) against wall time, per row format.

The Adult slice of REFERENCE.md section 7: the first 1,000 training rows, 100 of them held out
(validation_size=0.1). Only the tokens the model has to choose are counted (the grammar forces the rest).

    python -m benchmarks.vae_learning_curve --formats values json --minutes 10
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tabdifflm import DiffLMSynthesizer
from benchmarks.data import adult_train

OUT = Path(__file__).resolve().parent / "results"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", nargs="+", default=["values", "json"])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=15)
    args = ap.parse_args()
    df = adult_train().iloc[:args.rows]
    results = {}
    for fmt in args.formats:
        s = DiffLMSynthesizer(serialization=fmt, random_state=0, max_epochs=1000, eval_every=args.eval_every,
                              # the VAE stage gets ~94% of max_time less the (tiny) diffusion reserve
                              max_time=args.minutes * 60 / 0.94, diffusion_train_steps=10, verbose=True)
        t = time.monotonic()
        s.fit(df)
        curve = s.history_["vae"]
        results[fmt] = {"curve": curve, "fit_seconds": round(time.monotonic() - t, 1),
                        "tokens_per_row": s.tokens_per_row_, "torch_threads": torch.get_num_threads()}
        print(fmt, "final", curve[-1], "tokens/row", results[fmt]["tokens_per_row"], flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "vae_learning_curve.json").write_text(json.dumps(results, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for fmt, r in results.items():
            ax.plot([c["elapsed_s"] / 60 for c in r["curve"]], [c["val_nll"] for c in r["curve"]], "o-", ms=3,
                    label=f"{fmt} ({r['tokens_per_row']:.0f} tokens/row)")
        ax.set_xlabel("VAE training wall time (min), 2-core CPU")
        ax.set_ylabel("validation NLL per row (nats)")
        ax.set_title("Adult, 900 train / 100 validation rows")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / "vae_learning_curve.png", dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
