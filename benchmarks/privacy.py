"""Attack-based privacy risks (anonymeter) beside DCR, for reference rows and synthesizers on one split.

    python -m benchmarks.privacy --dataset adult --model DIR/adult_quick_seed0.tdl --attacks 2000 --sample-seeds 3

The quick profile's 2,000 training rows are attacked, with its 2,000-row holdout as the control rows the
generators never saw; ``--attacks`` each (at 2,000 every row is a target, so runs differ only in the
synthetic rows), on ``--sample-seeds`` sets of rows from each generator. Rows compared: a copy of the
training rows (the worst case), independent real rows from the same population (what no leak looks like; a
disjoint block of real rows a set, so their spread shows the attacks' noise),
SDV's TVAE with its defaults (fitted here), and DiffLM from a model saved by ``benchmarks.run
--save-models`` on the same rows (or fitted here for ``--minutes``). Each generator's rows are also scored
for MLE (on the real test set, three classifier seeds) and column-shape / pair-trend error, so risks and
usefulness come from one run. Writes ``results/privacy_<dataset>.{json,md}``.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
from tqdm import tqdm

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import dcr, fidelity, mle, privacy_risks

from .methods import METHODS
from .mle_ablation import cpu_name
from .run import save_results, split


COPY, INDEPENDENT = "copy of the training rows", "independent real rows"
VARIANTS = {  # how a saved DiffLM model is sampled: set_params, and whether the correction is estimated again
    "default": ({}, False),
    "no correction": ({"marginal_rows": 0}, False),
    "no filter": ({"privacy_filter": None}, False),
    "strict filter": ({"privacy_filter": "strict"}, False),
}


def variant(name: str) -> tuple[dict, bool]:
    """A variant's (set_params, estimate the correction again): one of VARIANTS, or ``stopped at X``, the
    sampler stopped at noise level X with the correction estimated there."""
    if name in VARIANTS:
        return VARIANTS[name]
    head, _, level = name.rpartition(" ")
    try:
        if head == "stopped at" and float(level) > 0:
            return {"diffusion_sigma_min": float(level)}, True
    except ValueError:
        pass
    raise ValueError(f"unknown variant {name!r}: one of {sorted(VARIANTS)} or 'stopped at X' with X > 0")


def independent_block(pool, n: int, k: int):
    """Set k of independent real rows: the k-th block of ``n`` rows of the shuffled pool after the first
    2n (the training and control rows), so no two sets share a row and none is a training or control row."""
    rows = pool.iloc[(2 + k) * n:(3 + k) * n].reset_index(drop=True)
    if len(rows) < n:
        raise ValueError(f"the pool has {len(pool)} rows: too few for independent set {k + 1} of {n} rows after "
                         f"the {2 * n} training and control rows; lower --sample-seeds")
    return rows


def generators(dataset: str, model: str | None, minutes: float, seed: int = 0, save: str | None = None,
               variants=("default",)) -> tuple:
    """The split and, per row source, a function sampling seed -> rows (the same rows for any seed where
    the source is fixed), with the seconds each source took to set up."""
    ds, train, holdout = split(dataset, "quick", seed)
    pool = ds.train.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # as split() shuffles it
    gens = {COPY: lambda k: train.copy(), INDEPENDENT: lambda k: independent_block(pool, len(train), k)}
    t = time.monotonic()
    tvae = METHODS["tvae"](train, 0, seed)
    draws = []  # TVAE draws from its global RNG: the k-th call is sampling seed k, made in order once

    def tvae_rows(k):
        while len(draws) <= k:
            draws.append(tvae(len(train))[0])
        return draws[k]

    gens["SDV TVAE, defaults"] = tvae_rows
    seconds = {"SDV TVAE, defaults": time.monotonic() - t}
    t = time.monotonic()
    if model:
        synth = DiffLMSynthesizer.load(model)
    else:
        synth = DiffLMSynthesizer(random_state=seed, max_time=minutes * 60, verbose=False).fit(train)
        if save:
            synth.save(save)
    seconds["DiffLM fit or load"] = time.monotonic() - t
    for v in variants:
        params, again = variant(v)
        model_v = copy.deepcopy(synth).set_params(verbose=False, **params)  # the loaded model stays as it is
        if again:
            t = time.monotonic()
            model_v.correct_marginals(model_v.marginal_rows or 1000, random_state=seed)
            seconds[f"DiffLM ({v}) correction"] = time.monotonic() - t
        name = "DiffLM" if v == "default" else f"DiffLM, {v}"
        gens[name] = (lambda k, s=model_v: s.sample(len(train), random_state=seed + k))
    return ds, train, holdout, gens, seconds


RISKS = ("singling_out", "linkability", "inference")


def pooled(runs: list, samples: int = 1) -> dict:
    """Several runs' risks (``samples`` sets of rows, each attacked with the same number of seeds, in
    order) -> per risk the mean, the range, in how many runs the interval lies above 0 (one run of 500
    attacks moves by about 0.05 from seed to seed), and the mean of the unclipped residual with its
    standard error over the sets of rows."""
    out = {}
    for k in RISKS:
        ok = [r[k] for r in runs if "error" not in r[k]]
        if not ok:
            out[k] = {"error": runs[0][k]["error"]}
            continue
        risks = [r["risk"] for r in ok]
        out[k] = {"risk": sum(risks) / len(risks), "min": min(risks), "max": max(risks),
                  "above_zero": sum(r["ci"][0] > 0 for r in ok), "runs": len(ok)}
        if all("residual" in r for r in ok) and len(ok) == len(runs):
            per = np.array([r["residual"] for r in ok]).reshape(samples, -1).mean(1)  # one value per set of rows
            out[k].update(residual=float(per.mean()),
                          residual_se=float(per.std(ddof=1) / np.sqrt(samples)) if samples > 1 else None)
    return out


def markdown(res: dict) -> str:
    def cell(r):
        if "error" in r:
            return "n/a"
        if "runs" in r:  # several attack seeds
            text = f"{r['risk']:.3f} ({r['min']:.3f}-{r['max']:.3f}; {r['above_zero']}/{r['runs']})"
            if r.get("residual_se") is not None:
                text += f"; {r['residual']:+.3f} ± {r['residual_se']:.3f}"
            return text
        return f"{r['risk']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"

    def use(r):  # rows from before MLE was part of this table have none
        if "mle" not in r:
            return " | |"
        return f" {r['mle']:.3f} | {r['shapes_error']:.2f} / {r['trends_error']:.2f} |"

    lines = [f"| rows | singling out | linkability | inference ({res['secret']}) | DCR share | exact copies | MLE "
             "| shapes / trends err % |", "|---|---|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        lines.append(f"| {name} | {cell(r['singling_out'])} | {cell(r['linkability'])} | {cell(r['inference'])} | "
                     f"{r['dcr_share'] * 100:.1f} % | {r['exact_copies']} |" + use(r))
    if res.get("sample_seeds", 1) > 1:
        seeds = "attack seed" + ("s" if res["attack_seeds"] > 1 else "")
        lines.append(f"\nEach cell: mean risk (range; runs whose interval lies above 0) over {res['sample_seeds']} "
                     f"sets of rows x {res['attack_seeds']} {seeds}, {res.get('attacks', 500)} attacks a run; then the "
                     "unclipped residual's mean ± its standard error over the sets of rows. The other columns are "
                     "means over the sets of rows.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="adult", choices=["adult", "magic", "beijing"])
    ap.add_argument("--model", help="DiffLM model fitted on the quick profile's rows of this dataset")
    ap.add_argument("--minutes", type=float, default=10, help="fit time when no --model is given")
    ap.add_argument("--attacks", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attack-seeds", type=int, default=1,
                    help="run the attacks with this many seeds and report each risk's mean, range and how "
                         "many intervals lie above 0")
    ap.add_argument("--sample-seeds", type=int, default=1,
                    help="sets of rows each generator writes (sampling seeds seed, seed+1, ...); every set is "
                         "attacked and scored, and the table gives means over them")
    ap.add_argument("--variants", nargs="+", default=["default"], metavar="VARIANT",
                    help="ways of sampling the DiffLM model: 'default' (as fitted); 'no correction' (without the "
                         "marginal correction); 'no filter' / 'strict filter' (the privacy filter off / turning "
                         "away every row inside a training row's neighbourhood); 'stopped at X' (the sampler "
                         "stopped at sigma X, the correction estimated there)")
    ap.add_argument("--save-model", metavar="PATH", help="save the model fitted for --minutes there")
    ap.add_argument("--stem", help="result file name without extension (default privacy_<dataset>)")
    args = ap.parse_args(argv)
    for v in args.variants:  # a typo fails here, not after the fit
        try:
            variant(v)
        except ValueError as e:
            ap.error(str(e))
    ds, train, holdout, gens, seconds = generators(args.dataset, args.model, args.minutes, args.seed,
                                                   args.save_model, args.variants)
    res = {"dataset": args.dataset, "cpu": cpu_name(), "train_rows": len(train), "control_rows": len(holdout),
           "secret": ds.target, "model": args.model, "minutes": None if args.model else args.minutes,
           "attacks": args.attacks, "attack_seeds": args.attack_seeds, "sample_seeds": args.sample_seeds,
           "variants": args.variants, "seconds": seconds, "rows": {}}
    stem = args.stem or f"privacy_{args.dataset}"
    for name, rows_for in gens.items():
        samples = 1 if name == COPY else args.sample_seeds  # independent rows: disjoint blocks of the pool
        runs, scores = [], []
        for k in tqdm(range(samples), desc=name, leave=False):
            t = time.monotonic()
            syn = rows_for(k)
            seconds[f"{name} rows"] = seconds.get(f"{name} rows", 0.0) + time.monotonic() - t
            runs += [privacy_risks(syn, train, holdout, secret=ds.target, n_attacks=args.attacks, seed=args.seed + j)
                     for j in range(args.attack_seeds)]
            d = dcr(syn, train, holdout)
            score = {"dcr_share": d["share_closer_to_train"], "exact_copies": d["exact_copies"]}
            if name != COPY:
                fid = fidelity(syn, train)
                score.update(mle=mle(syn, ds.test, ds.target, ds.task, seeds=(0, 1, 2))["mean"],
                             shapes_error=fid["column_shapes_error"], trends_error=fid["column_pair_trends_error"])
            scores.append(score)
        risks = runs[0] if len(runs) == 1 else {**pooled(runs, samples), "attack_runs": runs}
        mean = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        mean["exact_copies"] = int(round(mean["exact_copies"]))
        res["rows"][name] = {**risks, **mean, **({"per_sample": scores} if samples > 1 else {})}
        print(name, json.dumps({k: v for k, v in res["rows"][name].items() if k != "attack_runs"}), flush=True)
        if name != list(gens)[-1]:  # a long run keeps the row sources it finished if a later one fails
            save_results(stem, {**res, "partial": True}, markdown(res), echo=False)
    save_results(stem, res, markdown(res))


if __name__ == "__main__":
    main()
