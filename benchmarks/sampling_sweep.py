"""Sampling-time settings on one fitted model: decoder temperature and diffusion steps, no refit.

    python -m benchmarks.run --datasets beijing --methods difflm --merge --save-models /tmp/tdl_models
    python -m benchmarks.sampling_sweep --dataset beijing --models /tmp/tdl_models

Each setting samples as many rows as the quick profile's training rows and is scored with the harness's own
metrics on the same split, so its rows compare with the quick-profile table. Every setting is sampled with
``--seeds`` sampling seeds; the table gives their mean (MLE: mean over sampling seeds of the mean over MLE
seeds). Writes ``results/sampling_sweep_<dataset>.{json,md}``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tabdifflm import DiffLMSynthesizer

from .run import PROFILES, save_results, score, split


def sweep(dataset, model_path, settings, seeds=(0, 1), profile="quick"):
    cfg = PROFILES[profile]
    ds, train, holdout = split(dataset, profile)
    synth = DiffLMSynthesizer.load(model_path)
    synth.set_params(verbose=False)
    rows = []
    for temp, steps in settings:
        synth.set_params(temperature=temp, diffusion_steps=steps)
        runs = []
        for seed in seeds:
            t = time.monotonic()
            syn = synth.sample(len(train), random_state=1000 + seed)
            sec = time.monotonic() - t
            r = score(syn, ds, train, holdout, cfg["mle_seeds"], privacy=False)  # the sweep reports no attacks
            r["rows_per_second"] = len(syn) / sec
            runs.append(r)
            print(f"[{dataset}] temperature {temp} steps {steps} seed {seed}: MLE {r['mle']['mean']:.3f}", flush=True)
        feats = list(runs[0]["target_association"])
        rows.append({
            "temperature": temp, "diffusion_steps": steps, "seeds": list(seeds),
            "mle": float(np.mean([r["mle"]["mean"] for r in runs])),
            "mle_seed_std": float(np.std([r["mle"]["mean"] for r in runs])),
            "shapes_err": float(np.mean([r["fidelity"]["column_shapes_error"] for r in runs])),
            "trends_err": float(np.mean([r["fidelity"]["column_pair_trends_error"] for r in runs])),
            "dcr_share": float(np.mean([r["dcr"]["share_closer_to_train"] for r in runs])),
            "exact_copies": int(sum(r["dcr"]["exact_copies"] for r in runs)),
            "detection": float(np.mean([r["detection"] for r in runs])),
            "rows_per_second": float(np.mean([r["rows_per_second"] for r in runs])),
            "target_association": {f: float(np.mean([r["target_association"][f] for r in runs])) for f in feats},
        })
    return {"dataset": dataset, "task": ds.task, "target": ds.target, "model": str(model_path), "rows": rows}


def markdown(res) -> str:
    metric = "RMSE" if res["task"] == "regression" else "AUC"
    lines = [f"### {res['dataset']}: sampling settings on one fitted model (mean of {len(res['rows'][0]['seeds'])} "
             "sampling seeds)", "",
             f"| temperature | diffusion steps | MLE {metric} | spread over seeds | shapes err % | trends err % | "
             "DCR closer to train | exact copies | detection | rows/s |", "|---" * 10 + "|"]
    for r in res["rows"]:
        lines.append(f"| {r['temperature']} | {r['diffusion_steps']} | {r['mle']:.3f} | {r['mle_seed_std']:.3f} | "
                     f"{r['shapes_err']:.2f} | {r['trends_err']:.2f} | {r['dcr_share'] * 100:.1f} % | "
                     f"{r['exact_copies']} | {r['detection']:.3f} | {r['rows_per_second']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=["adult", "magic", "beijing"])
    ap.add_argument("--models", required=True, help="folder given to benchmarks.run --save-models")
    ap.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 0.9, 0.8, 0.7])
    ap.add_argument("--steps", nargs="+", type=int, default=[50])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    args = ap.parse_args(argv)
    model = Path(args.models) / f"{args.dataset}_{args.profile}_seed0.tdl"
    settings = [(t, s) for s in args.steps for t in args.temperatures]
    res = sweep(args.dataset, model, settings, seeds=tuple(range(args.seeds)), profile=args.profile)
    save_results(f"sampling_sweep_{args.dataset}", res, markdown(res))


if __name__ == "__main__":
    main()
