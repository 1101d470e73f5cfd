"""What the privacy filter buys: anonymeter's risks, DCR and usefulness of one model's rows unscreened and
screened four ways (``privacy_filter`` "strict" at ``privacy_filter_radius`` 0.5, the default; "strict" and
"match" at 1.0).

    python -m benchmarks.privacy_filter --model DIR/adult_long.tdl --sample-seeds 3 --stem privacy_filter_adult_long

Each set of rows comes from one unscreened draw of ``--pool`` rows (``privacy_filter=None``, sampling seed
k): "no filter" is its first ``n`` rows, the others the first ``n`` that :meth:`filter_rows` keeps, so the
variants differ only by the filter (``sample()`` screens the same way as it writes, with a
different random stream). Attacks and scores as :mod:`benchmarks.privacy` (every training row a target,
the holdout as control rows; MLE with three classifier seeds). ``--pool-dir`` keeps the draws, so a rerun
only scores. Writes ``results/<stem>.{json,md}``.
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import dcr, fidelity, mle, privacy_risks
from tabdifflm.privacy import NearestRowFilter

from .mle_ablation import cpu_name
from .run import save_results, split

# (mode, radius share): the default, then the whole neighbourhood turned away or matched to unseen rows
VARIANTS = {"no filter": (None, 1.0), "strict at 0.5 (default)": ("strict", 0.5), "strict at 1.0": ("strict", 1.0),
            "match at 1.0": ("match", 1.0)}


def filter_as_fit_builds_it(synth, train) -> NearestRowFilter:
    """For a model saved before version 0.18 (no filter in the file): the filter ``fit`` would have built, from
    the rows it was fitted on and the split it drew from its seed (the validation slice first)."""
    rows = synth._rows_of(train)
    n_val = int(min(max(2, round(synth.validation_size * len(rows))), 256))
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(synth.seed_)).tolist()
    return NearestRowFilter.fit(synth.schema_, [rows[i] for i in perm[n_val:]], [rows[i] for i in perm[:n_val]])


def score(args) -> dict:
    """One set of rows -> its risks (residuals), DCR share, MLE, shape and trend errors."""
    dataset, syn, attacks = args
    torch.set_num_threads(1)
    ds, train, holdout = split(dataset, "quick", 0)
    r = privacy_risks(syn, train, holdout, secret=ds.target, n_attacks=attacks, seed=0)
    fid = fidelity(syn, train)
    return {**{k: r[k].get("residual") for k in ("singling_out", "linkability", "inference")},
            "linkability_ci_low": r["linkability"].get("ci", [None])[0],
            "inference_ci_low": r["inference"].get("ci", [None])[0],
            "dcr_share": dcr(syn, train, holdout)["share_closer_to_train"],
            "mle": mle(syn, ds.test, ds.target, ds.task, seeds=(0, 1, 2))["mean"],
            "shapes_error": fid["column_shapes_error"], "trends_error": fid["column_pair_trends_error"]}


def markdown(res: dict) -> str:
    lines = [f"Privacy filter on {res['dataset']} ({res['model']}).", "",
             f"CPU: {res['cpu']}. {res['sample_seeds']} sets of {res['rows']} rows a variant, each from a draw of "
             f"{res['pool']} unscreened rows; {res['attacks']} attacks; residuals are means ± standard error "
             "over the sets, with how many sets' 95 % intervals lie above 0. Base rate (validation rows inside a "
             f"training row's neighbourhood, by radius share): "
             + ", ".join(f"{r}: {b:.3f}" for r, b in res["base_rate"].items())
             + (f"; sets topped up from the next seed's draw (rows): {res['topped_up']}" if res.get("topped_up")
                else "")
             + (" (the model predates the filter: built from its fit's rows and split, as fit does)."
                if res.get("filter_built_here") else "."), "",
             "| rows (radius share) | inside share | linkability | inference | DCR closer to train | MLE | shapes / trends err % |",
             "|---|---|---|---|---|---|---|"]
    for v, sets in res["variants"].items():
        def ms(k):
            x = np.array([s[k] for s in sets], dtype=float)
            return f"{x.mean():+.3f} ± {x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0:.3f}"

        above = {k: sum((s[f"{k}_ci_low"] or 0) > 0 for s in sets) for k in ("linkability", "inference")}
        mean = {k: float(np.mean([s[k] for s in sets])) for k in ("inside_share", "dcr_share", "mle", "shapes_error",
                                                                    "trends_error")}
        lines.append(f"| {v} | {mean['inside_share']:.3f} | {ms('linkability')} ({above['linkability']}/{len(sets)}) "
                     f"| {ms('inference')} ({above['inference']}/{len(sets)}) | {100 * mean['dcr_share']:.1f} % "
                     f"| {mean['mle']:.3f} | {mean['shapes_error']:.2f} / {mean['trends_error']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="adult", choices=["adult", "magic", "beijing"])
    ap.add_argument("--model", required=True, help="DiffLM model fitted on the quick profile's rows of the dataset "
                    "(benchmarks.privacy --save-model, benchmarks.run --save-models)")
    ap.add_argument("--sample-seeds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=3000, help="unscreened rows drawn a set")
    ap.add_argument("--attacks", type=int, default=2000)
    ap.add_argument("--pool-dir", help="folder for the unscreened draws (read if there, else written)")
    ap.add_argument("--jobs", type=int, default=1, help="sets scored side by side (one thread each)")
    ap.add_argument("--stem", help="result file name (default privacy_filter_<dataset>)")
    args = ap.parse_args(argv)
    ds, train, holdout = split(args.dataset, "quick", 0)
    synth = DiffLMSynthesizer.load(args.model).set_params(verbose=False)
    built_here = getattr(synth, "privacy_filter_", None) is None
    if built_here:
        synth.privacy_filter_ = filter_as_fit_builds_it(synth, train)
    n, f = len(train), synth.privacy_filter_
    res = {"dataset": args.dataset, "model": Path(args.model).name, "cpu": cpu_name(), "rows": n, "pool": args.pool,
           "attacks": args.attacks, "sample_seeds": args.sample_seeds,
           "base_rate": {str(r): f.base_rate(r) for r in sorted({r for _, r in VARIANTS.values()})},
           "filter_built_here": built_here,
           "seconds": {}, "variants": {v: [] for v in VARIANTS}}
    jobs, pools = [], []
    for k in range(args.sample_seeds):
        cached = Path(args.pool_dir) / f"seed{k}.pkl" if args.pool_dir else None
        t = time.monotonic()
        if cached is not None and cached.exists():
            pool = pd.read_pickle(cached)
        else:
            pool = synth.set_params(privacy_filter=None).sample(args.pool, random_state=k)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                pool.to_pickle(cached)
        res["seconds"][f"pool {k}"] = round(time.monotonic() - t, 1)
        pools.append(pool.reset_index(drop=True))
    res["topped_up"] = {}
    for k in range(args.sample_seeds):
        for v, (mode, share) in VARIANTS.items():
            synth.set_params(privacy_filter_radius=share)
            # a set the filter leaves short of n rows is topped up from the next seeds' draws, screened alike
            parts, got = [], 0
            for j in range(args.sample_seeds):
                pool = pools[(k + j) % args.sample_seeds]
                kept = pool if mode is None else synth.filter_rows(pool, mode=mode)
                parts.append(pool.loc[kept.index].assign(_inside=f.inside(synth._rows_of(kept), share).numpy()))
                got += len(kept)
                if got >= n:
                    break
            if got < n:
                raise SystemExit(f"the filter ({v}) kept {got} of {len(pools) * args.pool} rows, fewer than {n}: "
                                 "raise --pool")
            if len(parts) > 1:
                res["topped_up"][f"{v}/{k}"] = n - len(parts[0])
            rows = pd.concat(parts).iloc[:n].reset_index(drop=True)
            jobs.append((v, k, float(rows.pop("_inside").mean()), rows))
    t = time.monotonic()
    with ProcessPoolExecutor(max(1, args.jobs)) as ex:
        scores = list(ex.map(score, [(args.dataset, rows, args.attacks) for *_, rows in jobs]))
    res["seconds"]["scoring"] = round(time.monotonic() - t, 1)
    for (v, k, share, _), s in zip(jobs, scores):
        res["variants"][v].append({"seed": k, "inside_share": share, **s})
        print(v, k, {a: round(b, 4) if isinstance(b, float) else b for a, b in s.items()}, flush=True)
    save_results(args.stem or f"privacy_filter_{args.dataset}", res, markdown(res))


if __name__ == "__main__":
    main()
