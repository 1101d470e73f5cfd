"""Where do rows closer to the training data than to unseen data come from: the VAE or the prior?

On one model fitted on the quick profile's rows, decodes latents from four sources and scores the rows
(DCR share against the quick profile's training rows and holdout, exact copies, MLE, column shapes and
pair trends errors):

- the fitted diffusion prior (what ``sample`` does);
- a Gaussian with the training latents' mean and covariance (a prior that cannot memorise points);
- the posterior means of training rows (the VAE's reconstructions: how far the decoder reproduces rows);
- the posterior means of holdout rows (the same for rows the model never saw).

Also reports the VAE's memorisation gap over the fit and the model's ``privacy_report_``.

    python -m benchmarks.memorisation --dataset adult --minutes 10 --save /tmp/adult_mem.tdl
    python -m benchmarks.memorisation --dataset adult --model /tmp/adult_mem.tdl

On a model fitted with ``dp_epsilon`` (``--dp-epsilon 10 --epochs 1 --minutes 9 --name dp_sources_adult``)
it shows which stage loses the rows' usefulness: the prior (its rows are poor while the Gaussian's and the
posterior means' are good) or the VAE (the posterior means' rows are poor too).

Writes ``results/memorisation_<dataset>.{json,md}`` (``--name`` for another stem). Uses only the public API.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import dcr, fidelity, mle

from .mle_ablation import cpu_name
from .run import RESULTS, save_results, split


def latent_sources(synth, train, holdout, n, seed):
    """name -> latents [n, D] (VAE latent scale) for each source."""
    z_train = torch.as_tensor(synth.encode(train), dtype=torch.float32)
    z_hold = torch.as_tensor(synth.encode(holdout.iloc[:n]), dtype=torch.float32)
    cov = torch.cov(z_train.T) + 1e-5 * torch.eye(z_train.shape[1])
    gauss = torch.distributions.MultivariateNormal(z_train.mean(0), cov)
    torch.manual_seed(seed)
    return {"diffusion prior": synth.sample_latents(n, generator=torch.Generator().manual_seed(seed)),
            "Gaussian fitted to the training latents": gauss.sample((n,)),
            "training rows' posterior means": z_train[:n],
            "holdout rows' posterior means": z_hold}


def run(dataset, model, minutes, n, seed, save=None, **params) -> dict:
    ds, train, holdout = split(dataset, "quick", seed)
    t = time.monotonic()
    if model:
        synth = DiffLMSynthesizer.load(model)
    else:
        synth = DiffLMSynthesizer(random_state=seed, max_time=minutes * 60, verbose=False, **params).fit(train)
        if save:
            synth.save(save)
    synth.set_params(verbose=False)
    fit_s = time.monotonic() - t
    res = {"dataset": dataset, "cpu": cpu_name(), "minutes": minutes if not model else None, "rows": n,
           "fit_seconds": round(fit_s, 1), "vae_steps": synth.history_["vae"][-1]["step"],
           "stopped": synth.history_.get("stopped"), "privacy_report": getattr(synth, "privacy_report_", None),
           "memorisation_gap": [{k: h.get(k) for k in ("step", "val_nll", "probe_nll", "memorisation_gap")}
                                for h in synth.history_["vae"]], "sources": {}}
    for name, z in latent_sources(synth, train, holdout, n, seed).items():
        rows = synth.decode(z.numpy(), random_state=seed)
        d = dcr(rows, train, holdout)
        m = mle(rows, ds.test, ds.target, ds.task, seeds=(0, 1, 2))
        f = fidelity(rows, train)
        res["sources"][name] = {"dcr_share": d["share_closer_to_train"], "exact_copies": d["exact_copies"],
                                "mle": m["mean"], "mle_std": m["std"], "metric": m["metric"],
                                "shapes_error": f["column_shapes_error"], "trends_error": f["column_pair_trends_error"]}
        print(name, res["sources"][name], flush=True)
    return res


def markdown(res) -> str:
    metric = next(iter(res["sources"].values()))["metric"]
    lines = [f"### {res['dataset']}: where rows close to the training data come from ({res['rows']} rows a "
             f"source, {res['vae_steps']} VAE steps, {res['cpu']})", "",
             f"| latents decoded | DCR closer to train | exact copies | MLE ({metric}) | shapes err % | trends err % |",
             "|---|---|---|---|---|---|"]
    for name, r in res["sources"].items():
        fid = " | ".join(f"{r[k]:.2f}" if k in r else "" for k in ("shapes_error", "trends_error"))
        lines.append(f"| {name} | {100 * r['dcr_share']:.1f} % | {r['exact_copies']} | "
                     f"{r['mle']:.3f} ± {r['mle_std']:.3f} | {fid} |")
    gaps = [g["memorisation_gap"] for g in res["memorisation_gap"] if g.get("memorisation_gap") is not None]
    if gaps:
        lines += ["", f"VAE memorisation gap over the fit (evaluation by evaluation): "
                      f"{', '.join(f'{g:.3f}' for g in gaps)}; stopped: {res['stopped']}."]
    rep = res.get("privacy_report")
    if rep and "differential_privacy" in rep:
        r = rep["differential_privacy"]
        lines += ["", f"Differentially private fit: epsilon {r['epsilon']} spent of {r['target_epsilon']} "
                  f"(delta {r['delta']:.2g}); the Gaussian and posterior-mean rows use the encoder's latents "
                  "without noise, so they show what each stage keeps, not rows DP allows to release."]
    if rep and "closer_than_unseen" in rep:
        lines += [f"`privacy_report_`: closer_than_unseen {rep['closer_than_unseen']:.3f} "
                  f"[{rep['interval_95'][0]:.3f}, {rep['interval_95'][1]:.3f}] on {rep['rows']} rows, "
                  f"{rep['exact_copies']} exact copies."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="adult", choices=["adult", "magic", "beijing"])
    ap.add_argument("--model", help="a model fitted on the quick profile's rows of this dataset")
    ap.add_argument("--minutes", type=float, default=10, help="fit time when no --model is given")
    ap.add_argument("--rows", type=int, default=1000, help="rows decoded from each source")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="save the model fitted here")
    ap.add_argument("--name", help="results file stem (default: memorisation_<dataset>)")
    ap.add_argument("--dp-epsilon", type=float, help="fit with differential privacy to this epsilon")
    ap.add_argument("--epochs", type=int, help="max_epochs of the fit (a DP fit plans its noise for them)")
    a = ap.parse_args()
    params = {k: v for k, v in (("dp_epsilon", a.dp_epsilon), ("max_epochs", a.epochs)) if v is not None}
    res = run(a.dataset, a.model, a.minutes, a.rows, a.seed, a.save, **params)
    save_results(a.name or f"memorisation_{a.dataset}", res, markdown(res), RESULTS)


if __name__ == "__main__":
    main()
