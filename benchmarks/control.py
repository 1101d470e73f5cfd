"""Controllable generation on Adult and MAGIC: conditional fidelity and imputation, against simple baselines.

Conditional fidelity: for each condition, rows from ``sample(n, conditions=...)`` are compared with the
real rows that meet the condition (all of Adult's training rows, not only the 2,000 the model saw):
SDMetrics column shapes and pair trends errors, and the share of rows meeting the condition. Against:
DiffLM unconditional rows filtered to the condition (the same model), TVAE's own conditional sampling
where SDV offers it (exact values) and TVAE rows filtered to the condition otherwise.

Imputation: 20 % of the cells of unseen real rows are hidden completely at random; each method, fitted
on the same 2,000 complete training rows, fills them. Accuracy on categorical cells, RMSE / std on
numeric ones; and MLE of XGBoost trained on an imputed holdout table, scored on the real test set.
Against scikit-learn's IterativeImputer and KNNImputer (categories ordinal-encoded, numbers standardised).

    python -m benchmarks.control --minutes 10 --save /tmp/adult_control.tdl
    python -m benchmarks.control --model /tmp/adult_control.tdl      # reuse a fitted model
    python -m benchmarks.control --dataset magic --model /tmp/models/magic_quick_seed0.tdl

Class balancing: Adult cut to 2,000 rows with 5 % of the minority class (>50K); XGBoost trained on it as
it is, after imbalanced-learn's SMOTENC and after DiffLMOversampler; PR-AUC, F1 and ROC-AUC of the minority
class on the real test set. DiffLMOversampler's two sources come from one fitted model: "neighbours" (SMOTE
in the latent space, the default) and "prior" (new latents from the prior, steered to the class).

Reconstruction: per column, how well greedy decoding of a row's posterior mean writes it back, on training
rows and unseen rows (``--parts reconstruction``).

Writes benchmarks/results/control/{conditional,imputation,balance,reconstruction}.{json,md} for Adult, and
{conditional,imputation,reconstruction}_magic for MAGIC (class balancing is Adult's only).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from tabdifflm import DiffLMSynthesizer
from tabdifflm.metrics import fidelity, mle

from .methods import _takes_dict
from .mle_ablation import cpu_name
from .run import save_results, split

OUT = Path(__file__).resolve().parent / "results" / "control"

def _start(col, keep):
    """GReaT's conditioning for a condition on ``col``: every row starts with it, its value drawn from the
    training rows that meet ``keep`` ({category: share} for a category, the list of values for a number)."""
    def dist(train):
        v = train.loc[keep(train), col]
        if pd.api.types.is_numeric_dtype(v):
            return col, v.tolist()
        return col, v.value_counts(normalize=True).to_dict()
    return dist


def _female(d):
    return d["sex"] == "Female"


def _class(c):
    return lambda d: d["class"] == c


# dataset -> name -> (conditions for DiffLM, row filter on a DataFrame, exact values SDV's conditional
# sampling takes, GReaT's start column and its values from the training rows: one column only, so with
# two conditions the second is not shown to GReaT and its "meets" share says how often it holds)
CONDITIONS = {"adult": {
    "sex = Female": ({"sex": "Female"}, _female, {"sex": "Female"}, _start("sex", _female)),
    "income = >50K": ({"income": ">50K"}, lambda d: d["income"] == ">50K", {"income": ">50K"},
                      _start("income", lambda d: d["income"] == ">50K")),
    "age >= 50": ({"age": (50, None)}, lambda d: d["age"] >= 50, None, _start("age", lambda d: d["age"] >= 50)),
    "education in {Bachelors, Masters, Doctorate}": (
        {"education": ["Bachelors", "Masters", "Doctorate"]},
        lambda d: d["education"].isin(["Bachelors", "Masters", "Doctorate"]), None,
        _start("education", lambda d: d["education"].isin(["Bachelors", "Masters", "Doctorate"]))),
    "sex = Female and hours-per-week in [20, 35]": (
        {"sex": "Female", "hours-per-week": (20, 35)},
        lambda d: (d["sex"] == "Female") & d["hours-per-week"].between(20, 35), None, _start("sex", _female)),
}, "magic": {
    "class = h": ({"class": "h"}, _class("h"), {"class": "h"}, _start("class", _class("h"))),
    "fAlpha <= 10": ({"fAlpha": (None, 10)}, lambda d: d["fAlpha"] <= 10, None,
                     _start("fAlpha", lambda d: d["fAlpha"] <= 10)),
    "fLength >= 60": ({"fLength": (60, None)}, lambda d: d["fLength"] >= 60, None,
                      _start("fLength", lambda d: d["fLength"] >= 60)),
    "class = g and fAlpha >= 30": ({"class": "g", "fAlpha": (30, None)},
                                   lambda d: (d["class"] == "g") & (d["fAlpha"] >= 30), None,
                                   _start("class", _class("g"))),
}}


def _errors(syn: pd.DataFrame, real: pd.DataFrame) -> dict:
    f = fidelity(syn, real)
    return {"shapes_error": round(f["column_shapes_error"], 2), "trends_error": round(f["column_pair_trends_error"], 2)}


def conditional(s: DiffLMSynthesizer, train: pd.DataFrame, reference: pd.DataFrame, n: int, seed: int,
                dataset: str = "adult", great_minutes: float = 0.0, great_rows: int = 200) -> dict:
    """Rows of each condition from every method, against the real rows that meet it. GReaT (fitted for
    ``great_minutes``, 0 = left out) writes ``great_rows`` rows a condition and an unconditional pool of
    ``4 * great_rows`` rows, each within a sampling budget of ``great_minutes``."""
    res = {}
    t = time.monotonic()
    pool = s.sample(4 * n, random_state=seed)  # unconditional DiffLM rows, filtered per condition below
    pool_s = time.monotonic() - t
    tvae, tvae_pool = _tvae(train, seed)
    great = great_pool = None
    if great_minutes:
        from .baselines.great import GReaTBaseline

        great = GReaTBaseline(seed=seed).fit(train, great_minutes * 60)
        t = time.monotonic()
        great_pool = great.sample(4 * great_rows, budget_s=great_minutes * 60)
        great_pool_s = time.monotonic() - t
        res["great_fit"] = {"steps": great.steps_, "epochs": round(great.epochs_, 2), "minutes": great_minutes}
    for name, (conds, keep, exact, start) in CONDITIONS[dataset].items():
        real = reference[keep(reference)]
        row = {"real_rows": len(real)}
        t = time.monotonic()
        cond = s.sample(n, random_state=seed, conditions=conds)
        row["difflm"] = {**_errors(cond, real), "rows": len(cond), "meets": float(keep(cond).mean()),
                         "seconds": round(time.monotonic() - t, 1),
                         "condition_share_in_prior": s.last_sample_stats_["condition_share_in_prior"]}
        filt = pool[keep(pool)].head(n)
        row["difflm_filtered"] = {**(_errors(filt, real) if len(filt) >= 20 else {}), "rows": len(filt),
                                  "meets": 1.0, "seconds": round(pool_s * len(filt) / max(len(pool), 1), 1)}
        if tvae is not None and exact is not None:
            try:
                from sdv.sampling import Condition

                t = time.monotonic()
                out = tvae.sample_from_conditions([Condition(num_rows=n, column_values=exact)])
                out = out["table"] if isinstance(out, dict) else out
                row["tvae_conditional"] = {**_errors(out, real), "rows": len(out), "meets": float(keep(out).mean()),
                                           "seconds": round(time.monotonic() - t, 1)}
            except Exception as e:  # noqa: BLE001  (recorded, not hidden)
                row["tvae_conditional"] = {"error": f"{type(e).__name__}: {e}"[:200]}
        if tvae_pool is not None:
            tf = tvae_pool[keep(tvae_pool)].head(n)
            row["tvae_filtered"] = {**(_errors(tf, real) if len(tf) >= 20 else {}), "rows": len(tf), "meets": 1.0}
        if great is not None:
            col, dist = start(train)
            t = time.monotonic()
            out = great.sample(great_rows, budget_s=great_minutes * 60, start_col=col, start_col_dist=dist)
            row["great_start_col"] = {**(_errors(out, real) if len(out) >= 20 else {}), "rows": len(out),
                                      "meets": float(keep(out).mean()) if len(out) else 0.0,
                                      "seconds": round(time.monotonic() - t, 1)}
            gf = great_pool[keep(great_pool)]
            row["great_filtered"] = {**(_errors(gf, real) if len(gf) >= 20 else {}), "rows": len(gf), "meets": 1.0,
                                     "seconds": round(great_pool_s * len(gf) / max(len(great_pool), 1), 1)}
        res[name] = row
        print(name, json.dumps(row))
    return res


def _tvae(train, seed):
    try:
        import torch
        from sdv.metadata import Metadata
        from sdv.single_table import TVAESynthesizer

        np.random.seed(seed)
        torch.manual_seed(seed)
        meta = Metadata.detect_from_dataframes({"table": train})
        t = TVAESynthesizer(meta, epochs=300)
        wrap = _takes_dict(t)  # SDV 2 takes and gives {"table": frame}
        t.fit({"table": train} if wrap else train)
        pool = t.sample(20000)
        return t, pool["table"] if isinstance(pool, dict) else pool
    except Exception as e:  # noqa: BLE001
        print("TVAE unavailable:", e)
        return None, None


def _mask(df: pd.DataFrame, share: float, seed: int, skip=()) -> np.ndarray:
    m = np.random.default_rng(seed).random(df.shape) < share
    for c in skip:
        m[:, df.columns.get_loc(c)] = False
    return m


def _sklearn_imputer(kind: str, train: pd.DataFrame):
    """IterativeImputer / KNNImputer on mixed columns: categories as ordinal codes, numbers standardised;
    imputed codes rounded to the nearest category."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer

    cats = [c for c in train.columns if not pd.api.types.is_numeric_dtype(train[c])]
    levels = {c: sorted(train[c].dropna().astype(str).unique()) for c in cats}
    mean, std = train.drop(columns=cats).mean(), train.drop(columns=cats).std().replace(0, 1)

    def to_num(d):
        out = pd.DataFrame(index=d.index)
        for c in d.columns:
            if c in cats:
                out[c] = d[c].map(lambda v, c=c: levels[c].index(str(v)) if pd.notna(v) and str(v) in levels[c]
                                  else np.nan)
            else:
                out[c] = (d[c] - mean[c]) / std[c]
        return out

    imp = IterativeImputer(max_iter=10, random_state=0) if kind == "iterative" else KNNImputer(n_neighbors=5)
    imp.fit(to_num(train))

    def transform(d):
        arr = pd.DataFrame(imp.transform(to_num(d)), columns=d.columns, index=d.index)
        out = d.copy()
        for c in d.columns:
            if c in cats:
                codes = arr[c].round().clip(0, len(levels[c]) - 1).astype(int)
                out[c] = [levels[c][k] for k in codes]
            else:
                v = arr[c] * std[c] + mean[c]
                out[c] = v.round().astype(train[c].dtype) if pd.api.types.is_integer_dtype(train[c]) else v
        return out

    return transform


def imputation(s: DiffLMSynthesizer, train, holdout, test, target, task, n: int, seed: int) -> dict:
    rows = test.sample(min(n, len(test)), random_state=seed).reset_index(drop=True)
    hidden = _mask(rows, 0.2, seed)
    masked = rows.mask(hidden)
    hold_mask = _mask(holdout, 0.2, seed + 1, skip=[target])
    hold_masked = holdout.mask(hold_mask)
    methods = {"difflm": lambda d: s.sample_remaining_columns(d, random_state=seed),
               "iterative": _sklearn_imputer("iterative", train), "knn": _sklearn_imputer("knn", train)}
    res = {"rows": len(rows), "hidden_cells": int(hidden.sum())}
    for name, fill in methods.items():
        t = time.monotonic()
        out = fill(masked)
        secs = time.monotonic() - t
        acc, nrmse = {}, {}
        for j, c in enumerate(rows.columns):
            h = hidden[:, j]
            if not h.any():
                continue
            if pd.api.types.is_numeric_dtype(rows[c]):
                err = out.loc[h, c].astype(float).to_numpy() - rows.loc[h, c].astype(float).to_numpy()
                nrmse[c] = float(np.sqrt(np.mean(err ** 2)) / (train[c].std() or 1.0))
            else:
                acc[c] = float((out.loc[h, c].astype(str).to_numpy() == rows.loc[h, c].astype(str).to_numpy()).mean())
        filled_hold = fill(hold_masked)
        m = mle(filled_hold, test, target, task)
        res[name] = {"categorical_accuracy": round(float(np.mean(list(acc.values()))), 3),
                     "numeric_nrmse": round(float(np.mean(list(nrmse.values()))), 3),
                     "per_column_accuracy": {k: round(v, 3) for k, v in acc.items()},
                     "per_column_nrmse": {k: round(v, 3) for k, v in nrmse.items()},
                     "mle_imputed_holdout": round(m["mean"], 4), "mle_std": round(m["std"], 4),
                     "seconds_500_rows": round(secs, 1)}
        print(name, json.dumps(res[name]))
    res["mle_complete_holdout"] = round(mle(holdout, test, target, task)["mean"], 4)
    return res


def balance(test, target, minutes: float, seed: int, minority=">50K", share=0.05, rows=2000) -> dict:
    """Adult with the minority class cut to ``share``: XGBoost on the table as it is, after SMOTENC, after
    DiffLMOversampler ("auto": classes raised to the majority's count), scored on the real test set."""
    from imblearn.over_sampling import SMOTENC
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
    from xgboost import XGBClassifier

    from tabdifflm import DiffLMOversampler
    from tabdifflm.datasets import load_benchmark
    from tabdifflm.metrics import _Features

    full = load_benchmark("adult").train
    n_min = int(round(share * rows))
    pos = full[full[target] == minority].sample(n_min, random_state=seed)
    neg = full[full[target] != minority].sample(rows - n_min, random_state=seed)
    data = pd.concat([pos, neg]).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    X, y = data.drop(columns=[target]), data[target]
    cats = [i for i, c in enumerate(X.columns) if not pd.api.types.is_numeric_dtype(X[c])]
    out = {"rows": rows, "minority_rows": n_min, "minority": minority}
    t = time.monotonic()
    Xs, ys = SMOTENC(categorical_features=cats, random_state=seed).fit_resample(X.fillna("?") if cats else X, y)
    smote_s = time.monotonic() - t
    t = time.monotonic()
    ovs = DiffLMOversampler(synthesizer=DiffLMSynthesizer(max_time=minutes * 60, max_epochs=1000, verbose=False),
                            source="neighbours", random_state=seed)
    Xd, yd = ovs.fit_resample(X, y)
    difflm_s = time.monotonic() - t
    # source="prior" from the same fitted model: new latents from the prior, steered to the class
    t = time.monotonic()
    k = ovs.sampling_strategy_[minority]
    new = ovs.synthesizer_.sample(k, random_state=seed, conditions={target: minority})
    Xp = pd.concat([X, new.drop(columns=target)], ignore_index=True)
    yp = pd.concat([y, new[target]], ignore_index=True)
    prior_s = ovs.synthesizer_.fit_seconds_ + time.monotonic() - t  # the same fit, then sampling
    yt = (test[target] == minority).astype(int).to_numpy()
    for name, (Xa, ya, secs) in {"none": (X, y, 0.0), "smotenc": (Xs, ys, smote_s),
                                 "difflm_neighbours": (Xd, yd, difflm_s),
                                 "difflm_prior": (Xp, yp, prior_s)}.items():
        feats = _Features().fit(Xa)
        A, B = feats.transform(Xa), feats.transform(test.drop(columns=[target]))
        scores = {"pr_auc": [], "f1": [], "roc_auc": []}
        for s in range(3):
            m = XGBClassifier(n_estimators=300, max_depth=6, learning_rate=0.1, random_state=s, n_jobs=2,
                              verbosity=0).fit(A, (ya == minority).astype(int).to_numpy())
            p = m.predict_proba(B)[:, 1]
            scores["pr_auc"].append(average_precision_score(yt, p))
            scores["f1"].append(f1_score(yt, (p >= 0.5).astype(int)))
            scores["roc_auc"].append(roc_auc_score(yt, p))
        out[name] = {k: [round(float(np.mean(v)), 4), round(float(np.std(v)), 4)] for k, v in scores.items()}
        out[name].update({"train_rows": len(Xa), "minority_train_rows": int((ya == minority).sum()),
                          "seconds": round(secs, 1)})
        print(name, json.dumps(out[name]))
    return out


def _table(header: list, rows: list) -> str:
    """A Markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_balance(res: dict) -> str:
    return _table(["resampling", "training rows", "minority rows", "PR-AUC (minority)", "F1 (minority)", "ROC-AUC",
                   "seconds"],
                  [[m, r["train_rows"], r["minority_train_rows"], f"{r['pr_auc'][0]:.3f} ± {r['pr_auc'][1]:.3f}",
                    f"{r['f1'][0]:.3f} ± {r['f1'][1]:.3f}", f"{r['roc_auc'][0]:.3f}", r["seconds"]]
                   for m, r in ((m, res[m]) for m in ("none", "smotenc", "difflm_neighbours", "difflm_prior"))])


def markdown_conditional(res: dict) -> str:
    lines = ["| condition | real rows | method | rows | meets | shapes err % | trends err % | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in res["conditions"].items():
        for m in ("difflm", "difflm_filtered", "tvae_conditional", "tvae_filtered", "great_start_col",
                  "great_filtered"):
            r = row.get(m)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {name} | {row['real_rows']} | {m} | | | | | {r['error'][:60]} |")
                continue
            lines.append(f"| {name} | {row['real_rows']} | {m} | {r['rows']} | {r['meets']:.0%} | "
                         f"{r.get('shapes_error', float('nan')):.2f} | {r.get('trends_error', float('nan')):.2f} | "
                         f"{r.get('seconds', '')} |")
    g = res["info"].get("great_fit")
    if g:
        lines += ["", f"GReaT: fitted {g['minutes']:g} minutes ({g['steps']} steps, {g['epochs']} epochs); "
                      "`great_start_col` starts every row with the condition's column (its values drawn from the "
                      "training rows that meet it), GReaT's own conditioning; it takes one column, so a second "
                      "condition is not shown to it."]
    return "\n".join(lines) + "\n"


def markdown_imputation(res: dict) -> str:
    rows = [[m, f"{r['categorical_accuracy']:.3f}", f"{r['numeric_nrmse']:.3f}",
             f"{r['mle_imputed_holdout']:.3f} ± {r['mle_std']:.3f}", r["seconds_500_rows"]]
            for m, r in ((m, res[m]) for m in ("difflm", "iterative", "knn"))]
    rows.append(["complete holdout (no cell hidden)", "", "", f"{res['mle_complete_holdout']:.3f}", ""])
    return _table(["method", "categorical accuracy", "numeric RMSE / std", "MLE (AUC), XGBoost on imputed holdout",
                   "seconds"], rows)


def reconstruction(s: DiffLMSynthesizer, train, holdout, n: int) -> dict:
    """Per column, how well greedy decoding of a row's posterior mean writes the row back, on training
    rows and on rows the model never saw (what the latent carries, column by column)."""
    from tabdifflm.metrics import reconstruction as per_column

    out = {}
    for name, rows in (("train", train.iloc[:n]), ("unseen", holdout.iloc[:n])):
        t = time.monotonic()
        rebuilt = s.decode(s.encode(rows), temperature=0.0, random_state=0)
        out[name] = {"seconds": round(time.monotonic() - t, 1),
                     "columns": per_column(rows, rebuilt).reset_index().to_dict(orient="records")}
    return out


def markdown_reconstruction(res: dict) -> str:
    kinds = {c["name"]: c["kind"] for c in res["schema"]}
    tr = {r["column"]: r for r in res["train"]["columns"]}
    un = {r["column"]: r for r in res["unseen"]["columns"]}

    def f(v):
        return "" if v is None or v != v else f"{v:.3f}"
    return _table(["column", "kind", "exact, training rows", "exact, unseen rows", "RMSE / std, training rows",
                   "RMSE / std, unseen rows"],
                  [[c, kinds.get(c, ""), f(tr[c]["exact"]), f(un[c]["exact"]), f(tr[c]["nrmse"]), f(un[c]["nrmse"])]
                   for c in tr])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rows", type=int, default=500, help="rows per condition and imputed rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", default="adult", choices=sorted(CONDITIONS))
    ap.add_argument("--model", help="a saved model fitted on the quick profile's rows of the dataset")
    ap.add_argument("--save", help="save the fitted model here")
    ap.add_argument("--great-minutes", type=float, default=0.0,
                    help="add GReaT to the conditional table: its fit time (and each sampling run's budget)")
    ap.add_argument("--great-rows", type=int, default=200, help="GReaT's rows per condition")
    ap.add_argument("--parts", nargs="+", default=["conditional", "imputation"],
                    choices=["conditional", "imputation", "balance", "reconstruction"])
    args = ap.parse_args(argv)
    if "balance" in args.parts and args.dataset != "adult":
        ap.error("the class-balancing part runs on Adult only")
    warnings.filterwarnings("ignore")
    ds, train, holdout = split(args.dataset, "quick", seed=args.seed)
    tag = "" if args.dataset == "adult" else f"_{args.dataset}"  # Adult's files keep their names
    if "balance" in args.parts:
        bal = {"cpu": cpu_name(), "fit_minutes": args.minutes, "seed": args.seed,
               **balance(ds.test, ds.target, args.minutes, args.seed)}
        save_results("balance", bal, markdown_balance(bal), OUT)
    if not {"conditional", "imputation", "reconstruction"} & set(args.parts):
        return
    t = time.monotonic()
    if args.model:
        s = DiffLMSynthesizer.load(args.model)
    else:
        s = DiffLMSynthesizer(random_state=args.seed, max_time=args.minutes * 60, max_epochs=1000, verbose=False)
        s.fit(train)
        if args.save:
            s.save(args.save)
    s.set_params(verbose=False)
    info = {"cpu": cpu_name(), "fit_minutes": args.minutes if not args.model else None,
            "fit_seconds": round(time.monotonic() - t, 1), "vae_steps": s.history_["vae"][-1]["step"],
            "train_rows": len(train), "seed": args.seed, "dataset": args.dataset}
    if "conditional" in args.parts:
        conds = conditional(s, train, ds.train, args.rows, args.seed, args.dataset, args.great_minutes,
                            args.great_rows)
        cond = {"info": {**info, "great_fit": conds.pop("great_fit", None)}, "conditions": conds}
        save_results(f"conditional{tag}", cond, markdown_conditional(cond), OUT)
    if "imputation" in args.parts:
        imp = {"info": info, **imputation(s, train, holdout, ds.test, ds.target, ds.task, args.rows, args.seed)}
        save_results(f"imputation{tag}", imp, markdown_imputation(imp), OUT)
    if "reconstruction" in args.parts:
        rec = {"info": info, "schema": [{"name": c.name, "kind": c.kind} for c in s.schema_.columns],
               **reconstruction(s, train, holdout, args.rows)}
        save_results(f"reconstruction{tag}", rec, markdown_reconstruction(rec), OUT)


if __name__ == "__main__":
    main()
