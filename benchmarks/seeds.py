"""A method refitted with several fit seeds on the quick profile's rows: how much a single fit's scores move.

Same rows, budget and scoring as the quick profile (benchmarks.run: the seed-0 split's 2,000 training rows
and 2,000-row holdout, as many rows sampled, MLE on the real test set over 3 classifier seeds); only the
fit's seed changes. Each fit runs in its own process. DiffLM by default; ``--method`` refits a baseline the
same way, so means over fits compare with means over fits.

    python -m benchmarks.seeds --dataset beijing --seeds 0 1 2 --minutes 20
    python -m benchmarks.seeds --dataset adult --method tvae --seeds 0 1 2 3 4

Runs are added to results/seeds_<dataset>.json (a rerun of the same seed replaces it), with their mean in
results/seeds_<dataset>.md.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from .mle_ablation import cpu_name
from .methods import METHODS
from .run import PROFILES, RESULTS, _versions, run_method, score, split

# the package whose version a method's runs are filed under
VERSION_OF = {"difflm": "tabdifflm", "ctgan": "sdv", "tvae": "sdv", "gaussian_copula": "sdv", "great": "be-great"}


def markdown(dataset: str, runs: list, metric: str) -> str:
    lines = [f"### {dataset}: defaults refitted with several seeds (quick profile rows; MLE {metric}, "
             "mean ± std over 3 classifier seeds)", "",
             "| method | fit seed | version | fit s | VAE steps (why it stopped) | sampler stops at | MLE | shapes err % | "
             "trends err % | DCR closer to train | exact copies | breaking a rule |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    broken = lambda r: r["contradictions"]["rows"] * 100  # noqa: E731  (recorded since 0.16)
    key = lambda r: (r.get("method", "difflm"), r["version"])  # noqa: E731  (runs before --method are DiffLM's)
    for r in sorted(runs, key=lambda r: (*key(r), r["seed"])):
        sigma = "" if r.get("sigma_min") is None else f"{r['sigma_min']:g}"  # not recorded before 0.12's first runs
        vae = f"{r['vae_steps']} ({r['vae_stop']})" if "vae_steps" in r else ""
        lines.append(f"| {key(r)[0]} | {r['seed']} | {r['version']} | {r['fit_seconds']:.0f} | {vae} | "
                     f"{sigma} | {r['mle']['mean']:.3f} ± {r['mle']['std']:.3f} | {r['fidelity']['column_shapes_error']:.2f} | "
                     f"{r['fidelity']['column_pair_trends_error']:.2f} | "
                     f"{r['dcr']['share_closer_to_train'] * 100:.1f} % | {r['dcr']['exact_copies']} | "
                     + (f"{broken(r):.1f} % |" if "contradictions" in r else " |"))
    for group in sorted({key(r) for r in runs}):
        rs = [r for r in runs if key(r) == group]
        mean = lambda f: float(np.mean([f(r) for r in rs]))  # noqa: E731
        lines.append(f"| {group[0]} | mean of {len(rs)} | {group[1]} | | | | **{mean(lambda r: r['mle']['mean']):.3f}** | "
                     f"{mean(lambda r: r['fidelity']['column_shapes_error']):.2f} | "
                     f"{mean(lambda r: r['fidelity']['column_pair_trends_error']):.2f} | "
                     f"{mean(lambda r: r['dcr']['share_closer_to_train']) * 100:.1f} % | | "
                     + (f"{mean(broken):.1f} % |" if all("contradictions" in r for r in rs) else " |"))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="beijing", choices=["adult", "magic", "beijing"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=None,
                    help="fit budget (default: the quick profile's for the method, 20 for DiffLM)")
    ap.add_argument("--method", default="difflm", choices=sorted(METHODS))
    a = ap.parse_args(argv)

    cfg = PROFILES["quick"]
    ds, train, holdout = split(a.dataset, "quick", 0)
    path = RESULTS / f"seeds_{a.dataset}.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    budget_s = 60 * a.minutes if a.minutes else cfg["budget_s"].get(a.method, cfg["budget_s"]["default"])
    import tabdifflm

    version = tabdifflm.__version__ if VERSION_OF.get(a.method, "tabdifflm") == "tabdifflm" else \
        _versions().get(VERSION_OF[a.method], "")
    for seed in a.seeds:
        res = run_method(a.method, train, len(train), budget_s, seed, cfg["epochs"], timeout_s=3 * budget_s + 600)
        if not res["ok"]:
            raise SystemExit(f"seed {seed}: {res['error']}")
        rec = {"method": a.method, "seed": seed, "version": version, "minutes": budget_s / 60, "cpu": cpu_name(),
               "fit_seconds": res["fit_seconds"], **(res["info"] or {}),
               **score(res["synthetic"], ds, train, holdout, cfg["mle_seeds"], privacy=False)}
        same = lambda r: (r.get("method", "difflm"), r["seed"], r["version"]) == (a.method, seed, version)  # noqa: E731
        runs = [r for r in runs if not same(r)] + [rec]
        path.write_text(json.dumps({"dataset": a.dataset, "task": ds.task, "runs": runs}, indent=1, default=float))
        print(json.dumps({k: rec.get(k) for k in ("method", "seed", "fit_seconds", "vae_steps", "vae_stop")} |
                         {"mle": rec["mle"]["mean"]}), flush=True)
    metric = "RMSE, lower is better" if ds.task == "regression" else "ROC AUC"
    (RESULTS / f"seeds_{a.dataset}.md").write_text(markdown(a.dataset, runs, metric))


if __name__ == "__main__":
    main()
