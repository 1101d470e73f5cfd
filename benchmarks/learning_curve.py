"""Quality against fit time: MLE (and fidelity, DCR) of each method after fits of several budgets.

Same rows and protocol as the quick profile (benchmarks.run: 2,000 training rows, as many rows sampled, MLE
on the real test set with 3 seeds). Every (method, budget) is one fit in its own process.

    python -m benchmarks.learning_curve --dataset adult --methods difflm tabsyn --minutes 5 10 20 40

Points are added run by run to results/learning_curve_<dataset>.json (a rerun of the same method and budget
replaces its point); ``--with-quick`` also plots the quick profile's runs (results/quick/<dataset>.json)
at their own budgets. The table goes to learning_curve_<dataset>.md, the figure to .png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .mle_ablation import cpu_name
from .run import PROFILES, RESULTS, run_method, save_results, score, split


def _point(rec: dict, source: str) -> dict:
    return {"method": rec["method"], "minutes": rec["budget_s"] / 60, "source": source,
            "fit_seconds": rec["fit_seconds"], "mle": rec["mle"], "fidelity": rec["fidelity"], "dcr": rec["dcr"],
            "cpu": rec.get("cpu")}


def markdown(dataset: str, points: list, metric: str) -> str:
    lines = [f"### Learning curve, {dataset} (quick profile rows; MLE {metric}, mean ± std over 3 classifier seeds)",
             "", "| method | fit budget (min) | fit s | MLE | shapes err % | trends err % | DCR closer to train | from |",
             "|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["method"], p["minutes"])):
        lines.append(f"| {p['method']} | {p['minutes']:g} | {p['fit_seconds']:.0f} | {p['mle']['mean']:.3f} ± "
                     f"{p['mle']['std']:.3f} | {p['fidelity']['column_shapes_error']:.2f} | "
                     f"{p['fidelity']['column_pair_trends_error']:.2f} | {p['dcr']['share_closer_to_train'] * 100:.1f} % "
                     f"| {p['source']} |")
    return "\n".join(lines) + "\n"


def figure(dataset: str, points: list, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method in sorted({p["method"] for p in points}):
        ps = sorted((p for p in points if p["method"] == method), key=lambda p: p["minutes"])
        ax.errorbar([p["minutes"] for p in ps], [p["mle"]["mean"] for p in ps], [p["mle"]["std"] for p in ps],
                    marker="o", capsize=3, label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("fit budget (minutes, 2-core CPU)")
    ax.set_ylabel(f"MLE ({metric})")
    ax.set_title(f"{dataset}: quality against fit time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="adult", choices=["adult", "magic", "beijing"])
    ap.add_argument("--methods", nargs="+", default=["difflm", "tabsyn"])
    ap.add_argument("--minutes", nargs="+", type=float, default=[5, 10, 20, 40])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-quick", action="store_true", help="also plot the quick profile's runs")
    args = ap.parse_args(argv)
    cfg = PROFILES["quick"]
    ds, train, holdout = split(args.dataset, "quick", args.seed)
    stem = f"learning_curve_{args.dataset}"
    path = RESULTS / f"{stem}.json"
    points = json.loads(path.read_text())["points"] if path.exists() else []
    for minutes in args.minutes:
        for method in args.methods:
            budget = minutes * 60
            print(f"[{args.dataset}] {method}: {minutes:g} min", flush=True)
            res = run_method(method, train, len(train), budget, args.seed, cfg["epochs"], timeout_s=3 * budget + 600)
            if not res["ok"]:
                print(f"[{args.dataset}] {method} failed: {res['error']}", flush=True)
                continue
            rec = {"method": method, "budget_s": budget, "fit_seconds": res["fit_seconds"], "cpu": cpu_name(),
                   **score(res["synthetic"], ds, train, holdout, cfg["mle_seeds"], privacy=False)}
            points = [p for p in points if (p["method"], p["minutes"], p["source"]) != (method, minutes, "learning-curve fit")]
            points.append(_point(rec, "learning-curve fit"))
            _write(args.dataset, stem, points, ds.task, args.with_quick)


def _write(dataset, stem, points, task, with_quick):
    shown = list(points)
    if with_quick:  # the quick profile's runs of the same methods, at their budgets
        quick = json.loads((RESULTS / "quick" / f"{dataset}.json").read_text())
        methods = {p["method"] for p in points}
        shown += [_point(r, "quick profile") for r in quick["runs"] if r["method"] in methods and r["status"] == "ok"]
    metric = "ROC AUC" if task != "regression" else "RMSE"
    save_results(stem, {"dataset": dataset, "points": points}, markdown(dataset, shown, metric))
    figure(dataset, shown, metric, RESULTS / f"{stem}.png")


if __name__ == "__main__":
    main()
