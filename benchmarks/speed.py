"""Speed of sampling and training, against the bounds of this machine, in one run.

    python -m benchmarks.speed                      # Adult and MAGIC, batches 64, 256, 1024
    python -m benchmarks.speed --quick              # one dataset, small batches (a smoke check)

For each dataset a model is fitted briefly (speed does not depend on how well it is trained), then:

- sampling rows/s and tokens/s at each batch size, with the compiled grammar (``RowModel.generate``) and
  with the reference path kept below (the per-row Python loop the sampler used before the grammar was
  compiled), one after the other on the same latents;
- the same decoder's plain ``generate`` (unconstrained, full vocabulary) for the same number of tokens;
- the FLOP bound: a bf16 (or the decoder's dtype) matmul timed here, divided by
  2 x decoder parameters x (prefix + tokens per row);
- VAE training rows/s (``--vae-from DIR`` also times an older checkout of tabdifflm in a subprocess, for
  before/after numbers on the same machine); peak memory.

Writes ``benchmarks/results/speed.json`` and ``speed.md`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    amx = "amx_bf16" in out
    bf16 = "avx512_bf16" in out
    return f"{name} ({'AMX' if amx else 'no AMX'}, {'AVX512-BF16' if bf16 else 'no AVX512-BF16'}, {torch.get_num_threads()} threads)"


def matmul_flops(dtype, device, n: int = 1024, k: int = 576, m: int = 1536, seconds: float = 2.0) -> float:
    """FLOP/s of an [n, k] x [k, m] matmul (the decoder's MLP shape) in ``dtype`` on ``device``."""
    a = torch.randn(n, k, device=device).to(dtype)
    b = torch.randn(k, m, device=device).to(dtype)
    a @ b
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n * k * m * reps / (time.perf_counter() - t)


@torch.no_grad()
def generate_reference(model, z, temperature=1.0, generator=None):
    """The sampler before the grammar was compiled (kept to measure against and to test greedy equality):
    Python lists of states, the automaton's allowed() and next_state() per row per token, logits moved to
    the host at every step. Same arguments and output as ``RowModel.generate``."""
    from tabdifflm.decoder import run_base

    g, dec, inj = model.automaton, model.decoder, model.injector
    dev, dtype = model.device, dec.dtype
    z = z.to(dev)
    B = z.shape[0]
    head = dec.get_output_embeddings()
    vocab = g.vocab.to(dev)
    local = {t: k for k, t in enumerate(g.vocab.tolist())}
    h, cache = run_base(dec.base_model, inj.prefix_embeds(z).to(dtype), inj.memory(z, dtype), True)
    h = h[:, -1]
    offset = inj.token_offset(z)
    table = model.latent_head(z) if model.latent_head is not None else None
    state, rows = [g.start] * B, [[] for _ in range(B)]
    numbers = model.numbers
    cells = None if numbers is None else numbers.start(B, dev)  # where each row is in its number
    pad = g.lits[-1][-1]
    emb = dec.get_input_embeddings()
    for _ in range(g.max_tokens()):
        nxt = torch.full((B,), pad, dtype=torch.long)
        live = [b for b in range(B) if state[b] != g.done]
        if not live:
            break
        if numbers is not None:
            cells = numbers.enter(cells, torch.tensor([_column(g, state[b]) if state[b] != g.done else -1
                                                       for b in range(B)], device=dev))
        for b in live:
            if g.n_choices(state[b]) == 1:
                nxt[b] = g.allowed(state[b])[0]
        choose = [b for b in live if g.n_choices(state[b]) > 1]
        if choose:
            idx = torch.tensor(choose)
            logits = torch.nn.functional.linear(h[idx.to(dev)], head.weight[vocab]).float()
            if table is not None:
                grp = torch.tensor([g.group_of(state[b]) for b in choose])
                prev = torch.tensor([local[rows[b][-1]] if rows[b] else len(vocab) for b in choose])
                logits = logits + model.latent_head.choice_logits(table, idx.to(dev), grp.to(dev), prev.to(dev),
                                                                  None if cells is None else cells[idx.to(dev)])
            mask = torch.zeros(len(choose), len(vocab), dtype=torch.bool)
            for r, b in enumerate(choose):
                mask[r, [local[t] for t in g.allowed(state[b])]] = True
            logits = logits.masked_fill(~mask.to(dev), float("-inf")).cpu()
            if temperature <= 0:
                pick = logits.argmax(-1)
            else:
                pick = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(1)
            nxt[idx] = g.vocab[pick]
        for b in live:
            rows[b].append(int(nxt[b]))
            state[b] = g.next_state(state[b], int(nxt[b]))
        if numbers is not None:
            cells = numbers.advance(cells, torch.tensor([local[int(t)] for t in nxt], device=dev))
        x = emb(nxt.to(dev)[:, None]).float()
        if offset is not None:
            x = x + offset
        h, cache = run_base(dec.base_model, x.to(dtype), cache, True)
        h = h[:, -1]
    return rows


def _column(g, state) -> int:
    c = g.column_of(state)
    return -1 if c is None else c


def time_sampling(model, z, fn, repeats=1):
    """Rows/s and tokens/s of writing and reading (automaton decode) one row per latent."""
    t = time.perf_counter()
    n_tok = 0
    for _ in range(repeats):
        rows = fn(z)
        n_tok += sum(len(r) for r in rows)
        for r in rows:
            model.automaton.decode(r)
    s = time.perf_counter() - t
    return {"rows_per_s": round(repeats * len(z) / s, 2), "tokens_per_s": round(n_tok / s, 1), "seconds": round(s, 2)}


@torch.no_grad()
def time_plain_generate(decoder, batch, prompt_len, new_tokens):
    """Tokens/s of the decoder's own unconstrained ``generate`` (sampling, KV cache) for the same lengths."""
    ids = torch.randint(100, 1000, (batch, prompt_len), device=next(decoder.parameters()).device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_k=0, top_p=1.0,
              pad_token_id=0)
    decoder.generate(ids[:2], **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})
    t = time.perf_counter()
    decoder.generate(ids, **kw)
    s = time.perf_counter() - t
    return {"rows_per_s": round(batch / s, 2), "tokens_per_s": round(batch * new_tokens / s, 1), "seconds": round(s, 2)}


VAE_SNIPPET = """
import json, sys, time
sys.path.insert(0, {path!r})
import tabdifflm
from tabdifflm import DiffLMSynthesizer
from tabdifflm.datasets import load_benchmark
df = load_benchmark({dataset!r}).train.sample({rows}, random_state=0).reset_index(drop=True)
s = DiffLMSynthesizer(max_epochs={epochs}, eval_every=10**6, prior="gaussian", random_state=0, verbose=False)
t = time.monotonic()
s.fit(df)
vae = s.history_["vae"]
print(json.dumps({{"version": tabdifflm.__version__, "path": tabdifflm.__file__, "vae_seconds": vae[-1]["elapsed_s"],
                  "steps": vae[-1]["step"], "batch_size": s.batch_size, "fit_seconds": round(time.monotonic() - t, 1)}}))
"""


def time_vae(path: str, dataset: str, rows: int, epochs: int) -> dict:
    """VAE training rows/s of the tabdifflm checkout at ``path`` (its own process: a clean import)."""
    from tabdifflm.datasets import default_root

    code = VAE_SNIPPET.format(path=str(path), dataset=dataset, rows=rows, epochs=epochs)
    env = {**os.environ, "TABDIFFLM_DATA": str(default_root())}  # an older checkout looks beside itself
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"VAE timing in {path} failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["rows_per_s"] = round(r["steps"] * r["batch_size"] / r["vae_seconds"], 2)
    return r


def run(datasets, batches, fit_rows, fit_seconds, vae_from, out_dir: Path, reference_batches, plain_batches,
        merge=False):
    from tabdifflm import DiffLMSynthesizer
    from tabdifflm.datasets import load_benchmark

    res = {"cpu": cpu_name(), "torch": torch.__version__, "datasets": {}}
    if merge and (out_dir / "speed.json").exists():  # keep the other datasets' rows (same machine assumed)
        res["datasets"] = json.loads((out_dir / "speed.json").read_text())["datasets"]
    here = str(Path(__file__).resolve().parent.parent)
    for name in datasets:
        df = load_benchmark(name).train.sample(fit_rows, random_state=0).reset_index(drop=True)
        s = DiffLMSynthesizer(max_time=fit_seconds, random_state=0, verbose=False).fit(df)
        model = s.row_model()
        dec = model.decoder
        device = model.device
        n_params = sum(p.numel() for p in dec.parameters())
        P = model.injector.n_prefix
        flops = matmul_flops(dec.dtype, device)
        tpr = s.tokens_per_row_
        bound = flops / (2 * n_params * (P + tpr))
        r = {"tokens_per_row": round(tpr, 1), "choices_per_row": round(s.choices_per_row_, 1), "prefix": P,
             "decoder_parameters": n_params, "decoder_dtype": str(dec.dtype).replace("torch.", ""),
             "grammar": {"states": model.grammar.n_states, "sub_vocabulary": model.grammar.K,
                         "table_bytes": model.grammar.nbytes()},
             "matmul_tflops": round(flops / 1e12, 3), "flop_bound_rows_per_s": round(bound, 2), "sampling": {}}
        print(f"[{name}] {r}", flush=True)
        for b in batches:
            z = s.sample_latents(b, generator=torch.Generator().manual_seed(0))
            gen = torch.Generator().manual_seed(1)
            row = {"compiled": time_sampling(model, z, lambda x: model.generate(x, 1.0, gen))}
            if b in reference_batches:
                row["reference"] = time_sampling(model, z, lambda x: generate_reference(model, x, 1.0, gen))
                row["speedup"] = round(row["compiled"]["rows_per_s"] / row["reference"]["rows_per_s"], 2)
            if b in plain_batches:
                row["plain_generate"] = time_plain_generate(dec, b, P, int(round(tpr)))
            row["share_of_flop_bound"] = round(row["compiled"]["rows_per_s"] / bound, 3)
            r["sampling"][str(b)] = row
            print(f"[{name}] batch {b}: {row}", flush=True)
        if vae_from is not None or name == datasets[0]:
            r["vae"] = {"now": time_vae(here, name, 256, 1)}
            if vae_from is not None:
                r["vae"]["before"] = time_vae(vae_from, name, 256, 1)
                r["vae"]["speedup"] = round(r["vae"]["now"]["rows_per_s"] / r["vae"]["before"]["rows_per_s"], 2)
            print(f"[{name}] VAE {r['vae']}", flush=True)
        res["datasets"][name] = r
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        write(res, out_dir)
    return res


def write(res, out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(res, indent=1))
    lines = [f"# Speed\n\nCPU: {res['cpu']}; torch {res['torch']}; peak memory {res.get('peak_rss_mb')} MB.\n",
             "| dataset | batch | compiled rows/s | tokens/s | reference rows/s | speedup | plain generate rows/s "
             "| FLOP bound rows/s | share of bound |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["datasets"].items():
        for b, row in r["sampling"].items():
            ref = row.get("reference", {})
            lines.append(f"| {name} | {b} | {row['compiled']['rows_per_s']} | {row['compiled']['tokens_per_s']} | "
                         f"{ref.get('rows_per_s', '')} | {row.get('speedup', '')} | {row.get('plain_generate', {}).get('rows_per_s', '')} "
                         f"| {r['flop_bound_rows_per_s']} | {100 * row['share_of_flop_bound']:.0f} % |")
    lines.append("\n| dataset | tokens/row | prefix | grammar states | sub-vocabulary | matmul TFLOP/s | VAE rows/s now "
                 "| VAE rows/s before | VAE speedup |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for name, r in res["datasets"].items():
        v = r.get("vae", {})
        lines.append(f"| {name} | {r['tokens_per_row']} | {r['prefix']} | {r['grammar']['states']} | "
                     f"{r['grammar']['sub_vocabulary']} | {r['matmul_tflops']} | {v.get('now', {}).get('rows_per_s', '')} "
                     f"| {v.get('before', {}).get('rows_per_s', '')} | {v.get('speedup', '')} |")
    (out_dir / "speed.md").write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["adult", "magic"], choices=["adult", "magic", "beijing"])
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--reference-batches", nargs="+", type=int, default=[64, 256],
                    help="batches also timed on the reference (pre-compilation) path")
    ap.add_argument("--plain-batches", nargs="+", type=int, default=[64, 256],
                    help="batches also timed with the decoder's plain generate (slow: full vocabulary)")
    ap.add_argument("--merge", action="store_true", help="add to an existing speed.json")
    ap.add_argument("--fit-rows", type=int, default=1000)
    ap.add_argument("--fit-seconds", type=float, default=90)
    ap.add_argument("--vae-from", default=None, help="an older tabdifflm checkout to time VAE training against")
    ap.add_argument("--quick", action="store_true", help="Adult only, batch 16, 20-second fit")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if a.quick:
        a.datasets, a.batches, a.reference_batches, a.plain_batches = ["adult"], [16], [16], [16]
        a.fit_rows, a.fit_seconds = 200, 20
    run(a.datasets, a.batches, a.fit_rows, a.fit_seconds, a.vae_from, a.out, set(a.reference_batches),
        set(a.plain_batches), a.merge)


if __name__ == "__main__":
    main()
