"""Rows that contradict themselves: DiffLM settings beside TVAE and real rows, with MLE, fidelity and DCR.

    python -m benchmarks.coherence --dataset adult --fit default= noreadout=latent_readout=0
    python -m benchmarks.coherence --dataset adult --model default=DIR/adult_default.tdl --sigma 0.002 0.5

Each DiffLM setting is fitted on the quick profile's 2,000 training rows (``--minutes`` each, seed 0; saved
with ``--save-models``) or loaded (``--model NAME=PATH``), and writes 2,000 rows (sampling seed 0) at its
calibrated stopping point and at each ``--sigma`` (with the marginal correction estimated there). Every set
of rows is scored for the share of rows that break a rule the training rows keep
(:func:`tabdifflm.metrics.contradictions`), MLE on the real test set (three classifier seeds), column-shape
and pair-trend error and the DCR share. Writes ``results/coherence_<dataset>.{json,md}``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import contradiction_summary, dcr_distances, fidelity, implied_values, mle

from .methods import METHODS
from .mle_ablation import cpu_name
from .privacy import independent_block
from .run import save_results, split, worst_rules


def settings(text: str) -> tuple[str, dict]:
    """``name=k=v,k=v`` -> (name, params); numbers are read as numbers."""
    name, _, rest = text.partition("=")
    params = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        try:
            params[k] = int(v)
        except ValueError:
            try:
                params[k] = float(v)
            except ValueError:
                params[k] = v
    return name, params


def scores(rows, ds, train, holdout, rules) -> dict:
    """One set of rows -> contradictions (share of rows and the three most broken rules), MLE, errors, DCR."""
    c = contradiction_summary(rows, train, rules)
    d_tr, d_ho = dcr_distances(rows, train, holdout)
    fid = fidelity(rows, train)
    return {"contradicting_rows": c["rows"], "worst": c["worst"],
            "mle": mle(rows, ds.test, ds.target, ds.task, seeds=(0, 1, 2))["mean"],
            "shapes_error": fid["column_shapes_error"], "trends_error": fid["column_pair_trends_error"],
            "dcr_share": float(np.mean(d_tr < d_ho))}


def markdown(res: dict) -> str:
    lines = ["| rows | breaking a rule | MLE | shapes / trends err % | DCR closer to train | most broken rules |",
             "|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        lines.append(f"| {name} | {r['contradicting_rows'] * 100:.1f} % | {r['mle']:.3f} | {r['shapes_error']:.2f} / "
                     f"{r['trends_error']:.2f} | {r['dcr_share'] * 100:.1f} % | {worst_rules(r['worst'])} |")
    lines.append(f"\n{res['rules']} rules \"a is v, so b is w\" kept by the training rows (at least 1 % of them with "
                 "a = v, at most 1 % of those without b = w, and more than chance); a row breaking any counts once.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="adult", choices=["adult", "magic", "beijing"])
    ap.add_argument("--fit", nargs="*", default=[], metavar="NAME=PARAMS",
                    help="DiffLM settings to fit, e.g. default= or readout=latent_readout=64,latent_dropout=0.25")
    ap.add_argument("--model", nargs="*", default=[], metavar="NAME=PATH", help="saved DiffLM models to load")
    ap.add_argument("--minutes", type=float, default=20, help="fit time of each --fit setting")
    ap.add_argument("--sigma", nargs="*", type=float, default=[], help="also sample each model stopped here")
    ap.add_argument("--save-models", metavar="DIR", help="save the fitted models there as <dataset>_<name>.tdl")
    ap.add_argument("--stem", help="result file name without extension (default coherence_<dataset>)")
    args = ap.parse_args(argv)
    ds, train, holdout = split(args.dataset, "quick", 0)
    rules = implied_values(train)
    pool = ds.train.sample(frac=1.0, random_state=0).reset_index(drop=True)
    res = {"dataset": args.dataset, "cpu": cpu_name(), "train_rows": len(train), "rules": len(rules),
           "minutes": args.minutes, "rows": {}, "models": {}}

    def add(name, rows):
        res["rows"][name] = scores(rows, ds, train, holdout, rules)
        print(name, {k: v for k, v in res["rows"][name].items() if k != "worst"}, flush=True)

    add("independent real rows", independent_block(pool, len(train), 0))
    add("SDV TVAE, defaults", METHODS["tvae"](train, 0, 0)(len(train))[0])
    models = [(n, p, None) for n, p in map(settings, args.fit)] + [(*m.split("=", 1), "load") for m in args.model]
    for name, params, how in models:
        t = time.monotonic()
        if how == "load":
            synth = DiffLMSynthesizer.load(params).set_params(verbose=False)
        else:
            synth = DiffLMSynthesizer(random_state=0, max_time=args.minutes * 60, verbose=False, **params).fit(train)
            if args.save_models:
                synth.save(f"{args.save_models}/{args.dataset}_{name}.tdl")
        res["models"][name] = {"params": params, "seconds": round(time.monotonic() - t, 1),
                               "sigma_min": synth.diffusion_sigma_min_, "stopped": synth.history_["stopped"]}
        at = "no sampler" if synth.diffusion_sigma_min_ is None else f"sampler at {synth.diffusion_sigma_min_:g}"
        add(f"DiffLM {name} ({at})", synth.sample(len(train), random_state=0))
        for sigma in args.sigma:  # the marginal correction estimated again there, as fit does at its own
            synth.set_params(diffusion_sigma_min=sigma).correct_marginals(synth.marginal_rows or 1000, random_state=0)
            add(f"DiffLM {name} (sampler at {sigma:g})", synth.sample(len(train), random_state=0))
    save_results(args.stem or f"coherence_{args.dataset}", res, markdown(res))


if __name__ == "__main__":
    main()
