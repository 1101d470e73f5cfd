"""Business rules between two columns: written into the grammar, or rows written again until they keep it.

On one model fitted on the quick profile's rows of a dataset, samples the same number of rows three ways
and compares them with the training rows:

- without the rule (how often the model's own rows break it, and the speed to compare with);
- the rule as a ``Predicate`` (rows that break it are written again: the generic fallback);
- the rule as an ``Inequality`` (written into the row grammar where the columns allow it).

For each: rows per second (as a ratio to the rows without the rule, measured in the same process), the
share of rows written again, the share of the rows sitting on the bound (the two columns equal) and the
mean gap between them, against the training rows, and the column shapes and pair trends errors. Each
with and without a condition that makes the rule bind more often.

    python -m benchmarks.run --datasets beijing --methods difflm --profile quick --save-models /tmp/models
    python -m benchmarks.rules --dataset beijing --model /tmp/models/beijing_quick_seed0.tdl

Writes ``results/control/rules_<dataset>.{json,md}``. Rules are passed with ``set_params`` on the loaded
model; the script checks first that the training rows keep them (as ``fit`` would).
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from tabdifflm import DiffLMSynthesizer, Inequality, Predicate
from tabdifflm.metrics import fidelity

from .control import OUT, _table
from .mle_ablation import cpu_name
from .run import save_results, split

# dataset -> (low, op, high) and a condition under which the rule binds more often
RULES = {
    "beijing": (("DEWP", "<=", "TEMP"), {"TEMP": (None, 0)}),
    "adult": (("education-num", "<=", "age"), {"age": (None, 20)}),
    "magic": (("fWidth", "<=", "fLength"), {"fLength": (None, 20)}),
}


def _pair_stats(df, low, high) -> dict:
    gap = (df[high] - df[low]).astype(float)
    return {"at_bound": round(float((gap == 0).mean()), 4), "mean_gap": round(float(gap.mean()), 3)}


def run(dataset: str, model: str, n: int, seed: int) -> dict:
    ds, train, _ = split(dataset, "quick", seed)
    (low, op, high), condition = RULES[dataset]
    rule = Inequality(low, op, high)
    if not rule.holds(train).all():
        raise ValueError(f"the training rows break {rule.describe()}")
    s = DiffLMSynthesizer.load(model).set_params(verbose=False)
    kinds = {"no rule": None,
             "Predicate (written again)": Predicate(lambda d: rule.holds(d), name=f"{low} {op} {high}",
                                                    columns=[low, high]),
             "Inequality": rule}
    res = {"dataset": dataset, "cpu": cpu_name(), "rows": n, "rule": rule.describe(), "runs": []}
    for cond in (None, condition):
        real = train if cond is None else train[_meets(train, cond)]
        base = None
        for name, c in kinds.items():
            s.set_params(constraints=None if c is None else [c])
            t = time.monotonic()
            out = s.sample(n, random_state=seed, conditions=cond)
            secs = time.monotonic() - t
            st = s.last_sample_stats_
            base = base or n / secs
            f = fidelity(out, real)
            r = {"condition": "none" if cond is None else repr(cond), "rule as": name, "real_rows": len(real),
                 "breaks_rule": round(float(1 - rule.holds(out).mean()), 4),
                 "written_again": round(st["constraint_resampled_share"], 4),
                 "in_grammar": st["constraints_in_grammar"], "rows_per_s": round(n / secs, 2),
                 "speed_vs_no_rule": round(n / secs / base, 3),
                 **{f"real_{k}": v for k, v in _pair_stats(real, low, high).items()},
                 **_pair_stats(out, low, high),
                 "shapes_error": f["column_shapes_error"], "trends_error": f["column_pair_trends_error"]}
            res["runs"].append(r)
            print(r, flush=True)
    s.set_params(constraints=None)
    return res


def _meets(df, cond) -> np.ndarray:
    ok = np.ones(len(df), dtype=bool)
    for col, (lo, hi) in cond.items():
        ok &= (df[col] >= lo if lo is not None else True) & (df[col] <= hi if hi is not None else True)
    return ok


def markdown(res) -> str:
    head = (f"### {res['dataset']}: `{res['rule']}`, {res['rows']} rows a run ({res['cpu']})\n\n")
    return head + _table(
        ["condition", "rule as", "held in grammar", "rows breaking it", "written again", "rows/s (x no rule)",
         "on the bound: real / rows", "mean gap: real / rows", "shapes err %", "trends err %"],
        [[r["condition"], r["rule as"], "yes" if r["in_grammar"] else "no", f"{r['breaks_rule']:.1%}",
          f"{r['written_again']:.1%}", f"{r['rows_per_s']:.1f} ({r['speed_vs_no_rule']:.2f})",
          f"{r['real_at_bound']:.1%} / {r['at_bound']:.1%}", f"{r['real_mean_gap']:.2f} / {r['mean_gap']:.2f}",
          f"{r['shapes_error']:.2f}", f"{r['trends_error']:.2f}"] for r in res["runs"]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="beijing", choices=sorted(RULES))
    ap.add_argument("--model", required=True, help="a model fitted on the quick profile's rows of the dataset")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    res = run(a.dataset, a.model, a.rows, a.seed)
    save_results(f"rules_{a.dataset}", res, markdown(res), OUT)


if __name__ == "__main__":
    main()
