"""Privacy-utility curve of DiffLM's differential privacy option: MLE, shapes, trends, DCR and anonymeter's
attack risks at several epsilons and without DP, each fit on the same rows with the same budget.

    python -m benchmarks.dp_curve --dataset adult --epsilons none 1 3 10 --rows 2000 --epochs 1 --minutes 9

Training rows: the first ``--rows`` of the quick profile's 2,000 (seed 0); the quick profile's 2,000-row
holdout is the attacks' control set and DCR's holdout. A DP fit plans ``--epochs`` epochs of DP-SGD (its
noise is set for them) and reports the epsilon it spent: less than the target where ``--minutes`` ended the
VAE first. The fit without DP uses the package defaults with the same budget. Writes
``results/dp_<dataset>.{json,md}`` (each run is added as it ends; a rerun of an epsilon replaces it).
"""
from __future__ import annotations

import argparse
import json
import time

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import dcr, fidelity, mle, privacy_risks

from .mle_ablation import cpu_name
from .run import RESULTS, save_results, split


def run_one(dataset: str, epsilon: float | None, rows: int, epochs: int, minutes: float, attacks: int,
            seed: int = 0) -> dict:
    ds, train, holdout = split(dataset, "quick", seed)
    train = train.iloc[:rows].reset_index(drop=True)
    params = {"dp_epsilon": epsilon, "max_epochs": epochs} if epsilon is not None else {"max_epochs": 1000}
    t = time.monotonic()
    s = DiffLMSynthesizer(random_state=seed, max_time=minutes * 60, verbose=False, **params).fit(train)
    fit_s = time.monotonic() - t
    syn = s.sample(len(train), random_state=seed)
    f = fidelity(syn, train)
    d = dcr(syn, train, holdout)
    dp = (s.privacy_report_ or {}).get("differential_privacy")
    return {"epsilon": epsilon, "spent_epsilon": dp["epsilon"] if dp else None, "dp": dp, "rows": len(train),
            "minutes": minutes, "fit_seconds": round(fit_s, 1), "vae_steps": s.history_["vae"][-1]["step"],
            "stopped": s.history_["stopped"],
            "mle": mle(syn, ds.test, ds.target, ds.task), "shapes_error": f["column_shapes_error"],
            "trends_error": f["column_pair_trends_error"], "dcr_share": d["share_closer_to_train"],
            "exact_copies": d["exact_copies"],
            "risks": privacy_risks(syn, train, holdout, secret=ds.target, n_attacks=attacks, seed=seed)}


def markdown(res: dict) -> str:
    def risk(r):
        return "n/a" if "error" in r else f"{r['risk']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"

    lines = [f"| epsilon (target) | spent | noise (VAE / prior) | VAE steps | MLE ({res['metric']}) | shapes err % | "
             f"trends err % | DCR share | copies | singling out | linkability | inference ({res['secret']}) |",
             "|" + "---|" * 12]
    for r in sorted(res["runs"], key=lambda r: float("inf") if r["epsilon"] is None else r["epsilon"]):
        st = (r["dp"] or {}).get("stages", {})
        noise = (f"{st['vae']['noise_multiplier']:.2f} / {st['diffusion']['noise_multiplier']:.2f}"
                 if st else "")
        k = r["risks"]
        spent = "" if r["spent_epsilon"] is None else f"{r['spent_epsilon']:.2f}"
        lines.append(
            f"| {'no DP' if r['epsilon'] is None else r['epsilon']} | {spent} | {noise} | "
            f"{r['vae_steps']} | {r['mle']['mean']:.3f} ± {r['mle']['std']:.3f} | {r['shapes_error']:.2f} | "
            f"{r['trends_error']:.2f} | {r['dcr_share'] * 100:.1f} % | {r['exact_copies']} | "
            f"{risk(k['singling_out'])} | {risk(k['linkability'])} | {risk(k['inference'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="adult", choices=["adult", "magic", "beijing"])
    ap.add_argument("--epsilons", nargs="+", default=["1", "3", "10", "none"])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1, help="epochs a DP fit plans (its noise is set for them)")
    ap.add_argument("--minutes", type=float, default=9)
    ap.add_argument("--attacks", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = RESULTS / f"dp_{args.dataset}.json"
    ds = split(args.dataset, "quick", args.seed)[0]
    res = json.loads(path.read_text()) if path.exists() else {"runs": []}
    res.update(dataset=args.dataset, cpu=cpu_name(), secret=ds.target,
               metric="AUC" if ds.task == "classification" else "RMSE")
    for e in args.epsilons:
        eps = None if e.lower() == "none" else float(e)
        print(f"[{args.dataset}] epsilon {eps}: fitting for {args.minutes} min", flush=True)
        rec = run_one(args.dataset, eps, args.rows, args.epochs, args.minutes, args.attacks, args.seed)
        res["runs"] = [r for r in res["runs"] if (r["epsilon"], r["rows"]) != (eps, args.rows)] + [rec]
        save_results(f"dp_{args.dataset}", res, markdown(res))
        print(markdown({**res, "runs": [rec]}), flush=True)


if __name__ == "__main__":
    main()
