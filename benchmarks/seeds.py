"""DiffLM refitted with several fit seeds on the quick profile's rows: how much a single fit's scores move.

Same rows, budget and scoring as the quick profile (benchmarks.run: the seed-0 split's 2,000 training rows
and 2,000-row holdout, as many rows sampled, MLE on the real test set over 3 classifier seeds); only the
estimator's ``random_state`` changes. Each fit runs in its own process.

    python -m benchmarks.seeds --dataset beijing --seeds 0 1 2 --minutes 20

Runs are added to results/seeds_<dataset>.json (a rerun of the same seed replaces it), with their mean in
results/seeds_<dataset>.md.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from .mle_ablation import cpu_name
from .run import PROFILES, RESULTS, run_method, score, split


def markdown(dataset: str, runs: list, metric: str) -> str:
    lines = [f"### {dataset}: DiffLM's defaults refitted with several seeds (quick profile rows; MLE {metric}, "
             "mean ± std over 3 classifier seeds)", "",
             "| fit seed | version | fit s | VAE steps (why it stopped) | sampler stops at | MLE | shapes err % | "
             "trends err % | DCR closer to train | exact copies |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["version"], r["seed"])):
        sigma = "" if r.get("sigma_min") is None else f"{r['sigma_min']:g}"  # not recorded before 0.12's first runs
        lines.append(f"| {r['seed']} | {r['version']} | {r['fit_seconds']:.0f} | {r['vae_steps']} ({r['vae_stop']}) | "
                     f"{sigma} | {r['mle']['mean']:.3f} ± {r['mle']['std']:.3f} | {r['fidelity']['column_shapes_error']:.2f} | "
                     f"{r['fidelity']['column_pair_trends_error']:.2f} | "
                     f"{r['dcr']['share_closer_to_train'] * 100:.1f} % | {r['dcr']['exact_copies']} |")
    for version in sorted({r["version"] for r in runs}):
        rs = [r for r in runs if r["version"] == version]
        mean = lambda f: float(np.mean([f(r) for r in rs]))  # noqa: E731
        lines.append(f"| mean of {len(rs)} | {version} | | | | **{mean(lambda r: r['mle']['mean']):.3f}** | "
                     f"{mean(lambda r: r['fidelity']['column_shapes_error']):.2f} | "
                     f"{mean(lambda r: r['fidelity']['column_pair_trends_error']):.2f} | "
                     f"{mean(lambda r: r['dcr']['share_closer_to_train']) * 100:.1f} % | |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="beijing", choices=["adult", "magic", "beijing"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=20)
    a = ap.parse_args(argv)
    import tabdifflm

    cfg = PROFILES["quick"]
    ds, train, holdout = split(a.dataset, "quick", 0)
    path = RESULTS / f"seeds_{a.dataset}.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    for seed in a.seeds:
        res = run_method("difflm", train, len(train), a.minutes * 60, seed, cfg["epochs"],
                         timeout_s=3 * a.minutes * 60 + 600)
        if not res["ok"]:
            raise SystemExit(f"seed {seed}: {res['error']}")
        rec = {"seed": seed, "version": tabdifflm.__version__, "minutes": a.minutes, "cpu": cpu_name(),
               "fit_seconds": res["fit_seconds"], **res["info"],
               **score(res["synthetic"], ds, train, holdout, cfg["mle_seeds"], privacy=False)}
        runs = [r for r in runs if (r["seed"], r["version"]) != (seed, rec["version"])] + [rec]
        path.write_text(json.dumps({"dataset": a.dataset, "task": ds.task, "runs": runs}, indent=1, default=float))
        print(json.dumps({k: rec[k] for k in ("seed", "fit_seconds", "vae_steps", "vae_stop")} |
                         {"mle": rec["mle"]["mean"]}), flush=True)
    metric = "RMSE, lower is better" if ds.task == "regression" else "ROC AUC"
    (RESULTS / f"seeds_{a.dataset}.md").write_text(markdown(a.dataset, runs, metric))


if __name__ == "__main__":
    main()
