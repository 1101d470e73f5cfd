"""Where does the fidelity gap come from? Decode rows from (a) diffusion latents at temperature 1.0 and 0.7,
(b) the encoder's posterior means of training rows, (c) the mean latent only, and score each against the
training rows. Needs the model saved by examples/quickstart.py.

    python -m benchmarks.sampling_diagnostic --model adult.tdl --rows 500
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import fidelity

from .data import adult_train

OUT = Path(__file__).resolve().parent / "results" / "sampling_diagnostic.json"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="adult.tdl")
    ap.add_argument("--train-rows", type=int, default=2000, help="the rows the model was fitted on")
    ap.add_argument("--rows", type=int, default=500)
    args = ap.parse_args()
    df = adult_train().iloc[:args.train_rows]
    s = DiffLMSynthesizer.load(args.model)
    n = args.rows
    mu = torch.as_tensor(s.encode(df.sample(n, random_state=0)))
    configs = [("diffusion_T1.0", lambda: s.sample_latents(n, torch.Generator().manual_seed(1)), 1.0),
               ("diffusion_T0.7", lambda: s.sample_latents(n, torch.Generator().manual_seed(1)), 0.7),
               ("posterior_means_T1.0", lambda: mu, 1.0),
               ("mean_latent_T1.0", lambda: s.latent_mean_.expand(n, -1).clone(), 1.0)]
    res = {"model": args.model, "samples": n, "reference": f"the {len(df)} training rows"}
    for name, latents, temp in configs:
        t = time.monotonic()
        f = fidelity(s.decode(latents(), temperature=temp, random_state=0), df)
        res[name] = {"column_shapes": round(f["column_shapes"], 4),
                     "column_pair_trends": round(f["column_pair_trends"], 4),
                     "seconds": round(time.monotonic() - t, 1)}
        print(name, res[name], flush=True)
        OUT.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
