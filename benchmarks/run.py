"""Benchmark runner: every method on the same rows, every metric, one JSON + Markdown table + figures per dataset.

    python -m benchmarks.run --datasets adult magic --methods real difflm ctgan tvae gaussian_copula --profile quick

Each method runs in its own process (spawned), so its peak memory is its own and a crash or error is
recorded as a failure while the other methods go on.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
import traceback
from importlib import metadata as im
from pathlib import Path

import numpy as np
import pandas as pd

from tabdifflm.datasets import load_benchmark
from tabdifflm.metrics import (contradiction_summary, dcr, dcr_distances, detection, fidelity, mle, privacy_risks,
                               rule_label, target_associations)

from .methods import METHODS

RESULTS = Path(__file__).resolve().parent / "results"
PROFILES = {
    # sized for a 2-core CPU: fixed train subsample shared by all methods, full real test set
    "quick": {"train_rows": 2000, "budget_s": {"difflm": 1200, "great": 1200, "default": 900}, "epochs": 300, "mle_seeds": 3},
    # the papers' protocol on full data (for a GPU machine): fit on one half, the other half is the DCR holdout
    "full": {"train_rows": None, "budget_s": {"default": 4 * 3600}, "epochs": 1000, "mle_seeds": 5},
    # seconds-long run that exercises the whole harness (tests and smoke checks)
    "smoke": {"train_rows": 120, "budget_s": {"difflm": 60, "default": 60}, "epochs": 2, "mle_seeds": 1},
}


def _worker(method, train, n, budget_s, seed, epochs, q, save_path=None):
    try:
        t = time.monotonic()
        sampler = METHODS[method](train, budget_s, seed, epochs=epochs, save_path=save_path)
        fit_s = time.monotonic() - t
        t = time.monotonic()
        syn, first_try = sampler(n)
        sample_s = time.monotonic() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        q.put({"ok": True, "synthetic": syn, "fit_seconds": fit_s, "sample_seconds": sample_s,
               "first_try_valid_share": first_try, "peak_rss_mb": peak, "info": getattr(sampler, "info", None)})
    except BaseException as e:  # reported, not raised: the other methods still run
        q.put({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


def run_method(method, train, n, budget_s, seed, epochs, timeout_s, save_path=None):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(method, train, n, budget_s, seed, epochs, q, save_path))
    p.start()
    try:
        res = q.get(timeout=timeout_s)
    except Exception:
        res = {"ok": False, "error": f"no result within {timeout_s:.0f} s"}
    p.join(10)
    if p.is_alive():
        p.kill()
    return res


def valid_share(syn: pd.DataFrame, train: pd.DataFrame) -> float:
    """Rows whose categories all occur in training, with no missing value where training had none."""
    ok = pd.Series(True, index=syn.index)
    for c in train.columns:
        if train[c].notna().all():
            ok &= syn[c].notna()
        if not pd.api.types.is_numeric_dtype(train[c]) or pd.api.types.is_bool_dtype(train[c]):
            ok &= syn[c].isna() | syn[c].astype(str).isin(set(train[c].dropna().astype(str)))
    return float(ok.mean())


def _versions():
    out = {"python": platform.python_version()}
    for p in ("tabdifflm", "torch", "transformers", "sdv", "sdmetrics", "xgboost", "be-great"):
        try:
            out[p] = im.version(p)
        except im.PackageNotFoundError:
            pass
    return out


def figures(name, train, synthetic: dict, dcr_dists: dict, out_dir: Path):
    """Per-column distributions, DCR histograms, correlation-difference heatmaps (the report's figures)."""
    from tabdifflm.reporting import figures as draw

    draw(train, synthetic, dcr_dists, out_dir, name=name)


def markdown(name, profile, rows) -> str:
    head = ("| method | status | MLE | shapes err % | trends err % | DCR closer to train | exact copies | "
            "detection | valid on first try | fit s | sample rows/s | peak MB |")
    lines = [f"### {name} ({profile} profile)", "", head, "|" + "---|" * 12]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | failed: {r['error'][:80]} |" + " |" * 10)
            continue
        m = r["mle"]
        # first-try share where the method reports one (LLM methods regenerate or drop invalid rows)
        valid = r["first_try_valid_share"] if r.get("first_try_valid_share") is not None else r["valid_share"]
        valid = f"{valid * 100:.1f} %"
        if r.get("rows", r["train_rows"]) < r["train_rows"]:
            valid += f" ({r['rows']} rows)"
        lines.append(
            f"| {r['method']} | ok | {m['mean']:.3f} ± {m['std']:.3f} | {r['fidelity']['column_shapes_error']:.2f} | "
            f"{r['fidelity']['column_pair_trends_error']:.2f} | {r['dcr']['share_closer_to_train'] * 100:.1f} % | "
            f"{r['dcr']['exact_copies']} | {r['detection']:.3f} | {valid} | "
            f"{r['fit_seconds']:.0f} | {r['rows_per_second']:.1f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def association_table(real: dict, rows: list, target) -> str:
    """Each feature's association with the target (Cramér's V; regression: |r| or eta), real vs each method."""
    feats = list(real)
    runs = [r for r in rows if r.get("target_association")]
    lines = [f"Association of each feature with `{target}` (training rows vs each method's rows; "
             "`mean gap` = mean absolute difference from the training rows):", "",
             "| rows | " + " | ".join(str(f) for f in feats) + " | mean gap |", "|---" * (len(feats) + 2) + "|",
             "| training rows | " + " | ".join(f"{real[f]:.2f}" for f in feats) + " | |"]
    for r in runs:
        a = r["target_association"]
        gap = np.mean([abs(a[f] - real[f]) for f in feats])
        lines.append(f"| {r['method']} | " + " | ".join(f"{a[f]:.2f}" for f in feats) + f" | {gap:.3f} |")
    missing = [r["method"] for r in rows if r.get("status") == "ok" and not r.get("target_association")]
    if missing:
        lines += ["", f"Not measured for {', '.join(missing)} (their rows come from an earlier run that did not "
                      "record associations)."]
    return "\n".join(lines) + "\n"


def save_results(stem: str, res: dict, md: str, folder: Path = RESULTS, echo: bool = True) -> None:
    """Write ``<folder>/<stem>.json`` and ``.md`` (``folder`` defaults to ``results/``), and print the Markdown
    unless ``echo`` is False."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float))
    (folder / f"{stem}.md").write_text(md)
    if echo:
        print(md)


def worst_rules(worst: list) -> str:
    """The most broken rules of :func:`tabdifflm.metrics.contradiction_summary` as one table cell."""
    return "; ".join(f"{rule_label(w)}: {w['broken'] * 100:.0f} %" for w in worst)


def contradiction_table(rows: list) -> str:
    """Share of each method's rows that break a rule the training rows keep (:func:`contradictions`), with
    its worst-kept rules; runs from before the metric are left out."""
    runs = [r for r in rows if r.get("status") == "ok" and "contradictions" in r]
    if not runs:
        return ""
    lines = [f"Rows that contradict themselves: the share of each method's rows breaking at least one of the "
             f"{runs[0]['contradictions']['rules']} rules \"a is v, so b is w\" that the training rows keep "
             "(`tabdifflm.metrics.contradictions`), and the rules broken most often:", "",
             "| method | rows breaking a rule | most broken (share of the rows with a = v) |", "|---|---|---|"]
    for r in runs:
        c = r["contradictions"]
        lines.append(f"| {r['method']} | {c['rows'] * 100:.1f} % | {worst_rules(c['worst'])} |")
    return "\n".join(lines) + "\n"


def privacy_table(rows: list) -> str:
    """Anonymeter's risks per method, where they were measured."""
    runs = [r for r in rows if r.get("status") == "ok" and "error" not in r.get("privacy", {"error": ""})]
    if not runs:
        return ""

    def cell(p):
        return "n/a" if "error" in p else f"{p['risk']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]"
    p0 = runs[0]["privacy"]
    lines = [f"Attack-based privacy risks (anonymeter, {p0['n_attacks']} attacks on the training rows, the holdout "
             "as control rows; risk with its 95 % interval, 0 = no leak):", "",
             f"| method | singling out | linkability | inference ({p0['secret']}) |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {cell(r['privacy']['singling_out'])} | {cell(r['privacy']['linkability'])} | "
              f"{cell(r['privacy']['inference'])} |" for r in runs]
    missing = [r["method"] for r in rows if r.get("status") == "ok" and r not in runs]
    if missing:
        lines += ["", f"Not measured for {', '.join(missing)} (rows from runs made before the privacy metrics)."]
    return "\n".join(lines) + "\n"


def split(name, profile, seed=0):
    """The profile's (dataset, train, holdout): the rows every method fits on, and the DCR holdout."""
    cfg = PROFILES[profile]
    ds = load_benchmark(name)
    pool = ds.train.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    if cfg["train_rows"]:
        pool = pool.iloc[:2 * cfg["train_rows"]]
    half = len(pool) // 2
    return ds, pool.iloc[:half].reset_index(drop=True), pool.iloc[half:2 * half].reset_index(drop=True)


def score(syn, ds, train, holdout, mle_seeds, distances=None, privacy=True) -> dict:
    """Every metric of one synthetic table (MLE on the real test set, fidelity, DCR, detection, associations,
    and anonymeter's attack risks unless ``privacy=False``)."""
    distances = dcr_distances(syn, train, holdout) if distances is None else distances
    out = {"mle": mle(syn, ds.test, ds.target, ds.task, seeds=tuple(range(mle_seeds))),
           "fidelity": fidelity(syn, train), "dcr": dcr(syn, train, holdout, distances=distances),
           "detection": detection(syn, train), "target_association": target_associations(syn, ds.target, ds.task)}
    out["contradictions"] = contradiction_summary(syn, train)
    if not privacy:
        return out
    try:  # anonymeter's attacks, the holdout as control rows (an optional extra)
        out["privacy"] = privacy_risks(syn, train, holdout, secret=ds.target)
    except ImportError as e:
        out["privacy"] = {"error": str(e)}
    return out


def run_dataset(name, methods, profile, seed=0, merge=False, save_models=None):
    cfg = PROFILES[profile]
    ds, train, holdout = split(name, profile, seed)
    out_dir = RESULTS / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, synthetic, dists = [], {}, {}
    for method in methods:
        budget = cfg["budget_s"].get(method, cfg["budget_s"]["default"])
        print(f"[{name}] {method}: fitting on {len(train)} rows, budget {budget} s", flush=True)
        save_path = None
        if save_models and method == "difflm":
            Path(save_models).mkdir(parents=True, exist_ok=True)
            save_path = str(Path(save_models) / f"{name}_{profile}_seed{seed}.tdl")
        res = run_method(method, train, len(train), budget, seed, cfg["epochs"], timeout_s=3 * budget + 600,
                         save_path=save_path)
        rec = {"method": method, "budget_s": budget, "seed": seed, "train_rows": len(train)}
        if not res["ok"]:
            rec.update(status="failed", error=res["error"], traceback=res.get("traceback"))
            print(f"[{name}] {method} failed: {res['error']}", flush=True)
            rows.append(rec)
            continue
        syn = res["synthetic"]
        rec.update(status="ok", rows=len(syn), fit_seconds=res["fit_seconds"], sample_seconds=res["sample_seconds"],
                   rows_per_second=len(syn) / max(res["sample_seconds"], 1e-9), peak_rss_mb=res["peak_rss_mb"],
                   first_try_valid_share=res["first_try_valid_share"], valid_share=valid_share(syn, train))
        if res.get("info"):  # what the method says about its fit (DiffLM: VAE steps and why they ended)
            rec["info"] = res["info"]
        try:
            dists[method] = dcr_distances(syn, train, holdout)  # computed once: for the metric and the figure
            rec.update(score(syn, ds, train, holdout, cfg["mle_seeds"], distances=dists[method]))
        except Exception as e:  # a metric failing on one method's output is that method's failure
            rec.update(status="failed", error=f"metrics: {type(e).__name__}: {e}")
        synthetic[method] = syn
        rows.append(rec)
        print(f"[{name}] {method}: " + json.dumps({k: v for k, v in rec.items() if k in (
            "fit_seconds", "rows_per_second", "valid_share")} | {"mle": rec.get("mle", {}).get("mean")}), flush=True)
    result = {"dataset": name, "profile": profile, "task": ds.task, "target": ds.target, "train_rows": len(train),
              "test_rows": len(ds.test), "versions": _versions(), "runs": rows,
              "target_association_train": target_associations(train, ds.target, ds.task)}
    path = out_dir / f"{name}.json"
    suffix = ""
    if merge and path.exists():  # keep earlier runs of other methods on the same rows
        old = json.loads(path.read_text())
        if old.get("train_rows") == len(train):
            kept = [r for r in old["runs"] if r["method"] not in methods]
            result["runs"] = rows = kept + rows
            suffix = "_" + "_".join(methods)
    path.write_text(json.dumps(result, indent=1, default=float))
    privacy, contradicting = privacy_table(rows), contradiction_table(rows)
    (out_dir / f"{name}.md").write_text(markdown(name, profile, rows) + "\n" +
                                        association_table(result["target_association_train"], rows, ds.target) +
                                        ("\n" + contradicting if contradicting else "") +
                                        ("\n" + privacy if privacy else ""))
    if synthetic:
        figures(name + suffix, train, synthetic, dists, out_dir)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["adult"], choices=["adult", "magic", "beijing"])
    ap.add_argument("--methods", nargs="+", default=["real", "difflm", "ctgan", "tvae", "gaussian_copula"],
                    choices=sorted(METHODS))
    ap.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--merge", action="store_true", help="add to an existing result file instead of replacing it")
    ap.add_argument("--save-models", metavar="DIR", help="save DiffLM's fitted model there, one file per dataset")
    args = ap.parse_args(argv)
    for name in args.datasets:
        r = run_dataset(name, args.methods, args.profile, args.seed, merge=args.merge, save_models=args.save_models)
        print(markdown(name, args.profile, r["runs"]))


if __name__ == "__main__":
    main()
