"""What the privacy filter costs as tables grow: building it at fit (every training row's nearest other
training row) and screening sampled rows (each one's nearest training row).

    python -m benchmarks.privacy_filter_cost --dataset adult --rows 2000 8000 32000 --baseline-rows 8000

For each size, ``NearestRowFilter.fit`` on that many of the dataset's training rows (200 of the rest as the
unseen rows, as ``fit`` holds them out) and the screening of 2,000 other real rows, timed; the search
:func:`tabdifflm.privacy.nearest` does is exact and grows with rows x training rows. Up to
``--baseline-rows`` the same search is also timed as version 0.18.0 did it (every category compared by
broadcasting, [rows, training rows, columns] at once), in the same process, and the distances checked
equal. Writes ``results/privacy_filter_cost_<dataset>.{json,md}``.
"""
from __future__ import annotations

import argparse
import time

import torch

from tabdifflm.datasets import load_benchmark
from tabdifflm.privacy import NearestRowFilter, RowEncoding, nearest
from tabdifflm.schema import frame_rows, infer_schema

from .mle_ablation import cpu_name
from .run import save_results


def broadcast_nearest(xa, ca, xb, cb, exclude_self=False, chunk=256, budget=2e8):
    """Version 0.18.0's search, the baseline: category mismatches by a [rows, nb, c] comparison."""
    nb, c = len(xb), ca.shape[1]
    rows = max(1, min(chunk, int(budget // max(1, nb * max(1, c)))))
    dist = []
    for s in range(0, len(xa), rows):
        d = torch.cdist(xa[s:s + rows], xb, p=1) + 2.0 * (ca[s:s + rows, None, :] != cb[None, :, :]).sum(-1)
        if exclude_self:
            k = torch.arange(len(d))
            d[k, k + s] = float("inf")
        dist.append(d.min(1).values)
    return torch.cat(dist)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="adult", choices=["adult", "magic", "beijing"])
    ap.add_argument("--rows", type=int, nargs="+", default=[2000, 8000, 32000])
    ap.add_argument("--baseline-rows", type=int, default=8000, help="time the 0.18.0 search up to this size")
    ap.add_argument("--screen", type=int, default=2000, help="rows screened after each fit")
    args = ap.parse_args(argv)
    ds = load_benchmark(args.dataset)
    pool = ds.train.sample(frac=1.0, random_state=0).reset_index(drop=True)
    schema = infer_schema(pool)
    enc = RowEncoding(schema)
    res = {"dataset": args.dataset, "cpu": cpu_name(), "threads": torch.get_num_threads(), "sizes": []}
    for n in args.rows:
        n = min(n, len(pool) - 200 - args.screen)
        train = frame_rows(pool.iloc[:n], schema)
        unseen = frame_rows(pool.iloc[n:n + 200], schema)
        other = frame_rows(pool.iloc[n + 200:n + 200 + args.screen], schema)
        f, fit_s = timed(NearestRowFilter.fit, schema, train, unseen)
        _, screen_s = timed(f.inside, other, 0.5)
        row = {"train_rows": n, "fit_s": round(fit_s, 2), "screen_s": round(screen_s, 3),
               "base_rate_0.5": round(f.base_rate(0.5), 4)}
        if n <= args.baseline_rows:
            x, c = enc(train)
            (new, _), new_s = timed(nearest, x, c, x, c, exclude_self=True)
            old, old_s = timed(broadcast_nearest, x, c, x, c, exclude_self=True)
            assert torch.allclose(new, old, atol=1e-4), "the two searches disagree"
            row.update(search_s=round(new_s, 2), baseline_search_s=round(old_s, 2), speedup=round(old_s / new_s, 1))
        res["sizes"].append(row)
        print(row, flush=True)
    lines = [f"Privacy filter cost on {args.dataset} ({res['cpu']}, {res['threads']} threads)\n",
             "| training rows | fit (s) | screen 2,000 rows (s) | base rate at 0.5 | search (s) | 0.18.0 search (s) "
             "| speed-up |", "|---|---|---|---|---|---|---|"]
    for r in res["sizes"]:
        lines.append(f"| {r['train_rows']:,} | {r['fit_s']} | {r['screen_s']} | {r['base_rate_0.5']} | "
                     f"{r.get('search_s', '')} | {r.get('baseline_search_s', '')} | {r.get('speedup', '')} |")
    save_results(f"privacy_filter_cost_{args.dataset}", res, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
