"""Attack-based privacy risks (anonymeter) beside DCR, for reference rows and synthesizers on one split.

    python -m benchmarks.privacy --dataset adult --model /tmp/tdl_models/adult_quick_seed0.tdl

The quick profile's 2,000 training rows are attacked, with its 2,000-row holdout as the control rows the
generators never saw; 500 attacks each. Rows compared: a copy of the training rows (the worst case),
independent real rows from the same population (what no leak looks like), SDV's TVAE with its defaults
(fitted here), and DiffLM from a model saved by ``benchmarks.run --save-models`` on the same rows (or
fitted here for ``--minutes``). Each generator's rows are also scored for MLE (on the real test set, three
classifier seeds) and column-shape / pair-trend error, so risks and usefulness come from one run. Writes
``results/privacy_<dataset>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import time

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import dcr, fidelity, mle, privacy_risks

from .methods import METHODS
from .mle_ablation import cpu_name
from .run import save_results, split


def rows_to_attack(dataset: str, model: str | None, minutes: float, seed: int = 0, save: str | None = None) -> tuple:
    ds, train, holdout = split(dataset, "quick", seed)
    pool = ds.train.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    independent = pool.iloc[2 * len(train):3 * len(train)].reset_index(drop=True)
    tables = {"copy of the training rows": train.copy(), "independent real rows": independent}
    t = time.monotonic()
    tables["SDV TVAE, defaults"] = METHODS["tvae"](train, 0, seed)(len(train))[0]
    seconds = {"SDV TVAE, defaults": time.monotonic() - t}
    t = time.monotonic()
    if model:
        synth = DiffLMSynthesizer.load(model)
    else:
        synth = DiffLMSynthesizer(random_state=seed, max_time=minutes * 60, verbose=False).fit(train)
        if save:
            synth.save(save)
    synth.set_params(verbose=False)
    tables["DiffLM"] = synth.sample(len(train), random_state=seed)
    seconds["DiffLM"] = time.monotonic() - t
    return ds, train, holdout, tables, seconds


RISKS = ("singling_out", "linkability", "inference")


def pooled(runs: list) -> dict:
    """Several attack seeds' risks -> per risk the mean, the range, and in how many runs the interval
    lies above 0 (one run of 500 attacks moves by about 0.05 from seed to seed)."""
    out = {}
    for k in RISKS:
        ok = [r[k] for r in runs if "error" not in r[k]]
        if not ok:
            out[k] = {"error": runs[0][k]["error"]}
            continue
        risks = [r["risk"] for r in ok]
        out[k] = {"risk": sum(risks) / len(risks), "min": min(risks), "max": max(risks),
                  "above_zero": sum(r["ci"][0] > 0 for r in ok), "runs": len(ok)}
    return out


def markdown(res: dict) -> str:
    def cell(r):
        if "error" in r:
            return "n/a"
        if "runs" in r:  # several attack seeds
            return f"{r['risk']:.3f} ({r['min']:.3f}-{r['max']:.3f}; {r['above_zero']}/{r['runs']})"
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
    ap.add_argument("--save-model", metavar="PATH", help="save the model fitted for --minutes there")
    ap.add_argument("--stem", help="result file name without extension (default privacy_<dataset>)")
    args = ap.parse_args(argv)
    ds, train, holdout, tables, seconds = rows_to_attack(args.dataset, args.model, args.minutes, args.seed,
                                                         args.save_model)
    res = {"dataset": args.dataset, "cpu": cpu_name(), "train_rows": len(train), "control_rows": len(holdout),
           "secret": ds.target, "model": args.model, "minutes": None if args.model else args.minutes,
           "seconds": seconds, "rows": {}}
    for name, syn in tables.items():
        runs = [privacy_risks(syn, train, holdout, secret=ds.target, n_attacks=args.attacks, seed=args.seed + k)
                for k in range(args.attack_seeds)]
        risks = runs[0] if len(runs) == 1 else {**pooled(runs), "attack_runs": runs}
        d = dcr(syn, train, holdout)
        res["rows"][name] = {**risks, "dcr_share": d["share_closer_to_train"], "exact_copies": d["exact_copies"]}
        if name != "copy of the training rows":
            fid = fidelity(syn, train)
            res["rows"][name].update(mle=mle(syn, ds.test, ds.target, ds.task, seeds=(0, 1, 2))["mean"],
                                     shapes_error=fid["column_shapes_error"], trends_error=fid["column_pair_trends_error"])
        print(name, json.dumps(res["rows"][name]), flush=True)
    save_results(args.stem or f"privacy_{args.dataset}", res, markdown(res))


if __name__ == "__main__":
    main()
