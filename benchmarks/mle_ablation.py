"""Ablation of what makes DiffLM's rows keep the target-feature relationship, at one fit budget.

Each configuration is fitted on the quick profile's 2,000 training rows (same rows as benchmarks.run),
sampled, and scored: MLE (XGBoost grid, 3 seeds, real test set), SDMetrics shapes/trends errors, DCR share
and exact copies, tokens and choices per row, VAE steps, and each feature's association with the target
(real vs synthetic). ``--diagnose`` adds the VAE-or-prior diagnostic of benchmarks.mle_diagnostic.

    python -m benchmarks.mle_ablation --datasets magic adult --minutes 5 --samples 1000 \
        --configs paper default no_latent_head no_row_features plain_numbers token_loss

Results are appended run by run to benchmarks/results/mle_ablation.json (a rerun of the same dataset and
configuration replaces it) and the table is rewritten to mle_ablation.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

from tabdifflm.metrics import dcr, fidelity, mle, target_associations

from .mle_diagnostic import CONFIGS, diagnose, fit, markdown as diag_markdown
from .run import split

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "mle_ablation.json"

ABLATIONS = {
    **CONFIGS,
    "no_latent_head": {"latent_head": False},
    "no_aux": {"aux_weight": 0.0, "aux_steps": 0},
    "no_aux_steps": {"aux_steps": 0},
    "paper_beta": {"max_beta": 0.1},
    "no_aux_beta_0.1": {"aux_weight": 0.0, "aux_steps": 0, "max_beta": 0.1},
    "no_row_features": {"row_features": False},
    "plain_numbers": {"number_format": "plain"},
    "token_loss": {"column_loss": "token"},
    # the defaults of version 0.3 and the two changes that made version 0.4's defaults, each alone and together
    "v0.3_default": {"latent_head_hidden": 0, "aux_steps": 3},
    "mlp_head": {"latent_head_hidden": 256, "aux_steps": 3},
    "aux_steps_10": {"latent_head_hidden": 0, "aux_steps": 10},
    "mlp_aux10": {"latent_head_hidden": 256, "aux_steps": 10},  # = the 0.4 defaults
    # the decoder adapted (LoRA, base weights frozen) and the latent's capacity
    "lora": {"decoder_adapter": "lora"},
    "lora_r16": {"decoder_adapter": "lora", "lora_rank": 16, "lora_alpha": 32},
    "latent_32": {"latent_dim": 32},
    "latent_128": {"latent_dim": 128},
    "soft_tokens_16": {"n_soft_tokens": 16},
    # how early the memorisation check stops the VAE (0.15 is the default since 0.7; None: never)
    "gap_0.25": {"memorisation_gap": 0.25},
    "gap_none": {"memorisation_gap": None},
    "aux_steps_3": {"aux_steps": 3, "aux_stop_gap": None},
    # version 0.8: the heads-only steps end once the gap passes aux_stop_gap (0.05); before, they never did
    "v0.7_default": {"aux_stop_gap": None},
    # version 0.11: the number head, and the denoiser's longer training it needs
    "v0.10_default": {"number_head": 0, "diffusion_train_steps": 3000, "diffusion_learning_rate": 1e-3},
    "no_number_head": {"number_head": 0},
    "number_head_short_prior": {"diffusion_train_steps": 3000, "diffusion_learning_rate": 1e-3},
}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor()


def run_one(dataset: str, config: str, minutes: float, samples: int, seed: int, diag: bool) -> dict:
    ds, train, holdout = split(dataset, "quick", seed=seed)
    t = time.monotonic()
    s = fit(config, train, minutes, seed, **ABLATIONS[config])
    fit_s = time.monotonic() - t
    t = time.monotonic()
    syn = s.sample(samples, random_state=seed)
    sample_s = time.monotonic() - t
    f = fidelity(syn, train)
    d = dcr(syn, train, holdout)
    rec = {"dataset": dataset, "config": config, "params": ABLATIONS[config], "seed": seed, "minutes": minutes,
           "fit_seconds": round(fit_s, 1), "vae_steps": s.history_["vae"][-1]["step"],
           "best_val_nll": min(h["val_nll"] for h in s.history_["vae"]),
           "vae_stopped": s.history_["stopped"]["vae"],
           "memorisation_gaps": [h.get("memorisation_gap") for h in s.history_["vae"]],
           "diffusion_steps": s.history_["diffusion"][-1]["step"] if s.history_["diffusion"] else 0,
           "tokens_per_row": round(s.tokens_per_row_, 1), "choices_per_row": round(s.choices_per_row_, 1),
           "samples": samples, "rows_per_second": round(samples / sample_s, 2),
           "first_try_valid_share": s.last_sample_stats_["first_try_valid_share"],
           "mle": mle(syn, ds.test, ds.target, ds.task),
           "shapes_error": f["column_shapes_error"], "trends_error": f["column_pair_trends_error"],
           "dcr_share": d["share_closer_to_train"], "exact_copies": d["exact_copies"],
           "target_association": {"real": target_associations(train, ds.target, ds.task),
                                  "synthetic": target_associations(syn, ds.target, ds.task)},
           "cpu": cpu_name()}
    if diag:
        rec["diagnostic"] = diagnose(s, train, ds.test, ds.target, ds.task, prior=syn.iloc[:300], seed=seed)
    return rec


def table(runs: list) -> str:
    head = ("| dataset | config | MLE | shapes err % | trends err % | DCR share | copies | tokens/row | "
            "choices/row | VAE steps | diffusion steps | best val NLL | mean abs target-assoc. gap | recon. own target |")
    lines = [head, "|" + "---|" * 14]
    for r in runs:
        ta = r["target_association"]
        gap = sum(abs(ta["real"][k] - ta["synthetic"][k]) for k in ta["real"]) / max(len(ta["real"]), 1)
        own = r.get("diagnostic", {}).get("reconstruction_sampled", {}).get("own_target_share")
        lines.append(
            f"| {r['dataset']} | {r['config']} | {r['mle']['mean']:.3f} ± {r['mle']['std']:.3f} | "
            f"{r['shapes_error']:.2f} | {r['trends_error']:.2f} | {r['dcr_share'] * 100:.1f} % | {r['exact_copies']} | "
            f"{r['tokens_per_row']} | {r['choices_per_row']} | {r['vae_steps']} | {r['diffusion_steps']} | "
            f"{r['best_val_nll']:.1f} | "
            f"{gap:.3f} | {'' if own is None else f'{own:.2f}'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["magic", "adult"], choices=["adult", "magic", "beijing"])
    ap.add_argument("--configs", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diagnose", nargs="*", default=["paper", "default"],
                    help="configurations that also get the VAE-or-prior diagnostic")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    out = Path(args.out)
    for dataset in args.datasets:
        for config in args.configs:
            print(f"[{dataset}] {config}: fitting for {args.minutes} min", flush=True)
            rec = run_one(dataset, config, args.minutes, args.samples, args.seed, config in args.diagnose)
            runs = json.loads(out.read_text())["runs"] if out.exists() else []
            runs = [r for r in runs if (r["dataset"], r["config"], r["seed"], r["minutes"]) !=
                    (dataset, config, args.seed, args.minutes)] + [rec]
            out.write_text(json.dumps({"runs": runs}, indent=1, default=float))
            md = table(runs)
            for r in runs:
                if "diagnostic" in r:
                    md += "\n" + diag_markdown({**r["diagnostic"], "dataset": r["dataset"], "config": r["config"],
                                                "vae_steps": r["vae_steps"], "fit_seconds": r["fit_seconds"]}, None)
            out.with_suffix(".md").write_text(md)
            print(table([rec]), flush=True)


if __name__ == "__main__":
    main()
