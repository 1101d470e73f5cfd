"""Where is the relationship between the target and the features lost: in the VAE or in the prior?

For one fitted model, compares (a) real training rows, (b) reconstructions (encode real rows, decode the
posterior means, greedy and sampled), (c) rows from prior latents, on MLE and on each feature's
association with the target; and per column, how many nats the row's own latent saves over another
row's latent (what the latent carries). Uses only the public API (encode, decode, column_nll, sample).

    python -m benchmarks.mle_diagnostic --dataset magic --config paper --minutes 5
    python -m benchmarks.mle_diagnostic --dataset magic --config default --minutes 5

Writes benchmarks/results/mle_diagnostic_<dataset>_<config>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import mle, target_associations

from .run import split

RESULTS = Path(__file__).resolve().parent / "results"

# The paper's model and ours, as parameter sets; the ablation adds leave-one-out variants.
CONFIGS = {
    "paper": {"number_format": "plain", "latent_head": False, "aux_weight": 0.0, "aux_steps": 0,
              "row_features": False, "column_loss": "token", "max_beta": 0.1, "diffusion_sigma_min": 0.002,
              "marginal_rows": 0},
    "default": {},
}


def class_match(a: pd.Series, b: pd.Series) -> float:
    return float((a.astype(str).to_numpy() == b.astype(str).to_numpy()).mean())


def diagnose(synth: DiffLMSynthesizer, train: pd.DataFrame, test: pd.DataFrame, target, task: str,
             n_rows: int = 300, nll_rows: int = 200, prior: pd.DataFrame | None = None, seed: int = 0) -> dict:
    """MLE and target associations of real rows, reconstructions and prior rows; nats the latent saves."""
    real = train.sample(n_rows, random_state=seed).reset_index(drop=True)
    z = synth.encode(real)
    frames = {"real": real,
              "reconstruction_greedy": synth.decode(z, temperature=0, random_state=seed),
              "reconstruction_sampled": synth.decode(z, temperature=synth.temperature, random_state=seed),
              "prior": prior if prior is not None else synth.sample(n_rows, random_state=seed)}
    out = {"rows": n_rows}
    for name, f in frames.items():
        rec = {"mle": mle(f, test, target, task)["mean"], "target_association": target_associations(f, target, task)}
        if name.startswith("reconstruction"):
            if task == "classification":
                rec["own_target_share"] = class_match(f[target], real[target])
            rec["cells_equal_share"] = {str(c): class_match(f[c], real[c]) for c in real.columns}
        out[name] = rec
    if task == "classification":
        out["majority_share"] = float(real[target].value_counts(normalize=True).iloc[0])
    part = real.iloc[:nll_rows]
    own = synth.column_nll(part, z[:nll_rows])
    other = synth.column_nll(part, np.roll(z[:nll_rows], 1, axis=0))  # each row gets its neighbour's latent
    out["nats_own_latent"] = {str(c): round(float(v), 3) for c, v in own.mean().items()}
    out["nats_saved_by_own_latent"] = {str(c): round(float(v), 3) for c, v in (other - own).mean().items()}
    return out


def markdown(res: dict, target) -> str:
    feats = list(res["real"]["target_association"])
    kinds = ["real", "reconstruction_greedy", "reconstruction_sampled", "prior"]
    lines = [f"### {res['dataset']}, config `{res['config']}` ({res['vae_steps']} VAE steps, {res['fit_seconds']:.0f} s fit)",
             "", "| rows | MLE | own target | " + " | ".join(feats) + " |", "|---" * (3 + len(feats)) + "|"]
    for k in kinds:
        r = res[k]
        own = f"{r['own_target_share']:.2f}" if "own_target_share" in r else ""
        lines.append(f"| {k} | {r['mle']:.3f} | {own} | " +
                     " | ".join(f"{r['target_association'][f]:.2f}" for f in feats) + " |")
    cols = list(res["nats_saved_by_own_latent"])
    lines += ["", f"Nats per row the own latent saves over a neighbour's (majority class share "
                  f"{res.get('majority_share', float('nan')):.2f}):", "",
              "| | " + " | ".join(cols) + " |", "|---" * (1 + len(cols)) + "|",
              "| NLL, own latent | " + " | ".join(f"{res['nats_own_latent'][c]:.2f}" for c in cols) + " |",
              "| saved | " + " | ".join(f"{res['nats_saved_by_own_latent'][c]:.2f}" for c in cols) + " |"]
    return "\n".join(lines) + "\n"


def fit(config: str, train: pd.DataFrame, minutes: float, seed: int = 0, **extra) -> DiffLMSynthesizer:
    params = {**CONFIGS.get(config, {}), **extra}
    s = DiffLMSynthesizer(random_state=seed, max_time=minutes * 60, max_epochs=1000, verbose=False, **params)
    return s.fit(train)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="magic", choices=["adult", "magic", "beijing"])
    ap.add_argument("--config", default="default", choices=sorted(CONFIGS))
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="also save the fitted model to this file (to study it further)")
    args = ap.parse_args(argv)
    ds, train, _ = split(args.dataset, "quick", seed=args.seed)
    t = time.monotonic()
    s = fit(args.config, train, args.minutes, args.seed)
    res = {"dataset": args.dataset, "config": args.config, "params": s.get_params(),
           "fit_seconds": time.monotonic() - t, "vae_steps": s.history_["vae"][-1]["step"]}
    if args.save:
        s.save(args.save)
    res.update(diagnose(s, train, ds.test, ds.target, ds.task, n_rows=args.rows, seed=args.seed))
    stem = RESULTS / f"mle_diagnostic_{args.dataset}_{args.config}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    stem.with_suffix(".md").write_text(markdown(res, ds.target))
    print(markdown(res, ds.target))


if __name__ == "__main__":
    main()
