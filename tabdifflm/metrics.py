"""Quality metrics users can call on their own data, following the protocol of REFERENCE.md section 3.

- :func:`mle`: machine-learning efficiency (train XGBoost on synthetic rows, test on real ones).
- :func:`fidelity`: SDMetrics Column Shapes and Column Pair Trends.
- :func:`dcr`: distance to closest record (TabSyn's share, SDMetrics' protections, exact copies);
  :func:`dcr_distances` gives the per-row distances.
- :func:`detection`: SDMetrics LogisticDetection.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import torch

from .diffusion import closer_share, closer_share_se
from .schema import infer_schema

# TabSyn's XGBoost grid: 3 x 2 x 3 x 2 = 36 configurations.
MLE_GRID = [dict(n_estimators=n, min_child_weight=w, max_depth=d, gamma=g)
            for n, w, d, g in itertools.product([10, 50, 100], [1, 10], [5, 10, 20], [0, 1])]


def sdmetrics_metadata(df: pd.DataFrame) -> dict:
    """SDMetrics single-table metadata from our schema inference (numerical / categorical / datetime)."""
    kinds = {"numeric": "numerical", "categorical": "categorical", "datetime": "datetime"}
    return {"columns": {str(c.name): {"sdtype": kinds[c.kind]} for c in infer_schema(df).columns}}


def fidelity(synthetic: pd.DataFrame, real_train: pd.DataFrame) -> dict:
    """Column Shapes and Column Pair Trends of SDMetrics' QualityReport, thresholds at 0 (TabSyn-comparable).

    Returns {"column_shapes", "column_pair_trends"} as scores in [0, 1] and the same as TabSyn-style errors
    ``(1 - score) * 100`` under keys ending in ``_error``, plus per-column shape scores.
    """
    from sdmetrics.reports.single_table import QualityReport

    real = real_train.rename(columns=str)
    syn = synthetic.rename(columns=str)[list(real.columns)]
    report = QualityReport()
    # SDMetrics >= 0.27 scores only strongly related pairs (the rest get no score) unless these are 0: the
    # report's own values (0.32) are copied onto the property when it generates, so set both
    for holder in (report, report._properties.get("Column Pair Trends")):
        if holder is not None and hasattr(holder, "real_correlation_threshold"):
            holder.real_correlation_threshold = 0
            holder.real_association_threshold = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.generate(real, syn, sdmetrics_metadata(real), verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    shapes = report.get_details("Column Shapes")
    out = {
        "column_shapes": float(props["Column Shapes"]),
        "column_pair_trends": float(props["Column Pair Trends"]),
        "per_column_shape": {r["Column"]: round(float(r["Score"]), 4) for _, r in shapes.iterrows()},
    }
    out["column_shapes_error"] = round((1 - out["column_shapes"]) * 100, 2)
    out["column_pair_trends_error"] = round((1 - out["column_pair_trends"]) * 100, 2)
    return out


def _as_numbers(s: pd.Series) -> pd.Series | None:
    """A column as floats if it holds numbers or datetimes (ns since the epoch, NaT -> NaN); None for
    categorical columns."""
    if pd.api.types.is_datetime64_any_dtype(s):
        naive = s.dt.tz_convert(None) if getattr(s.dt, "tz", None) is not None else s
        ns = naive.astype("datetime64[ns]").to_numpy().view("int64").astype(float)
        return pd.Series(np.where(naive.isna().to_numpy(), np.nan, ns), index=s.index)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s.astype(float)
    return None


class _Features:
    """The protocol's features, fitted on one frame: log for large non-negative numbers, else min-max;
    one-hot categoricals (unknown categories ignored); datetimes as numbers."""

    def fit(self, X: pd.DataFrame):
        self.num, self.cat, self.log, self.lo, self.hi = [], [], set(), {}, {}
        for c in X.columns:
            x = _as_numbers(X[c])
            if x is not None:
                self.num.append(c)
                if x.min() >= 0 and x.max() >= 1e3:
                    self.log.add(c)
                    x = np.log(np.maximum(x, 1e-2))
                self.lo[c], self.hi[c] = float(x.min()), float(x.max())
            else:
                self.cat.append(c)
        from sklearn.preprocessing import OneHotEncoder

        self.ohe = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        if self.cat:
            self.ohe.fit(X[self.cat].astype(str))
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        cols = []
        for c in self.num:
            x = _as_numbers(X[c]).fillna(self.lo[c]).to_numpy()
            if c in self.log:
                x = np.log(np.maximum(x, 1e-2))
            cols.append(((x - self.lo[c]) / ((self.hi[c] - self.lo[c]) or 1.0))[:, None])
        if self.cat:
            cols.append(self.ohe.transform(X[self.cat].astype(str)))
        return np.hstack(cols) if cols else np.zeros((len(X), 0))


def _score(task, y_true, pred) -> float:
    from sklearn.metrics import mean_squared_error, roc_auc_score

    if task == "regression":
        return float(np.sqrt(mean_squared_error(y_true, pred)))
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, pred, multi_class="ovr") if pred.ndim == 2 else roc_auc_score(y_true, pred))


def mle(synthetic: pd.DataFrame, real_test: pd.DataFrame, target, task: str, seeds=(0, 1, 2), grid=None,
        n_jobs: int = 2) -> dict:
    """Machine-learning efficiency: XGBoost trained on ``synthetic``, scored on ``real_test``.

    For each seed, 1/9 of the synthetic rows is held out to pick one of the 36 grid configurations
    (TabSyn's), the winner is refit on all synthetic rows and scored on the real test set: ROC-AUC for
    ``task="classification"`` (higher is better), RMSE of log(clip(y, 1, 20000)) for ``"regression"``
    (lower is better). Returns the mean, the standard deviation, every seed's score and the chosen
    configurations. Call it with the real training set as ``synthetic`` for the upper bound.
    """
    from xgboost import XGBClassifier, XGBRegressor

    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    for name, d in (("synthetic", synthetic), ("real_test", real_test)):
        if target not in d.columns:
            raise ValueError(f"target column {target!r} is not in {name}")
    grid = MLE_GRID if grid is None else grid
    syn = synthetic.dropna(subset=[target]).reset_index(drop=True)
    test = real_test.dropna(subset=[target]).reset_index(drop=True)
    features = syn.drop(columns=[target])
    feats = _Features().fit(features)
    X, Xt = feats.transform(features), feats.transform(test.drop(columns=[target]))
    if task == "regression":
        y = np.log(np.clip(syn[target].astype(float).to_numpy(), 1, 20000))
        yt = np.log(np.clip(test[target].astype(float).to_numpy(), 1, 20000))
    else:
        classes = sorted(set(syn[target].astype(str)) | set(test[target].astype(str)))
        index = {c: i for i, c in enumerate(classes)}
        y = syn[target].astype(str).map(index).to_numpy()
        yt = test[target].astype(str).map(index).to_numpy()
        if len(np.unique(y)) < 2:
            raise ValueError(f"the synthetic data has a single class in {target!r}; MLE needs two or more")

    def model(params, seed):
        if task == "regression":
            return XGBRegressor(**params, random_state=seed, n_jobs=n_jobs, verbosity=0)
        return XGBClassifier(**params, random_state=seed, n_jobs=n_jobs, verbosity=0)

    def fit_predict(params, seed, Xa, ya, Xb):
        present = np.unique(ya)
        if task == "regression":
            return model(params, seed).fit(Xa, ya).predict(Xb)
        # XGBoost wants labels 0..k-1: remap to the classes present, and put probabilities back in place
        remap = {c: i for i, c in enumerate(present)}
        m = model(params, seed).fit(Xa, np.vectorize(remap.get)(ya))
        p = m.predict_proba(Xb)
        full = np.zeros((len(Xb), len(classes)))
        full[:, present] = p
        return full if len(classes) > 2 else full[:, 1]

    scores, chosen = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(X))
        n_val = max(1, len(X) // 9)
        va, tr = idx[:n_val], idx[n_val:]
        best, best_p = None, None
        for params in grid:
            s = _score(task, y[va], fit_predict(params, seed, X[tr], y[tr], X[va]))
            if best is None or (not np.isnan(s) and (np.isnan(best) or (s < best if task == "regression"
                                                                        else s > best))):
                best, best_p = s, params
        scores.append(_score(task, yt, fit_predict(best_p, seed, X, y, Xt)))
        chosen.append(best_p)
    return {"metric": "rmse" if task == "regression" else "roc_auc", "mean": float(np.mean(scores)),
            "std": float(np.std(scores)), "scores": scores, "params": chosen}


def _dcr_matrices(frames: list[pd.DataFrame], ref: pd.DataFrame) -> list[np.ndarray]:
    """Frames as vectors in one space for L1 distances: numbers scaled by ``ref``'s range, categories one-hot."""
    out = [[] for _ in frames]
    for c in ref.columns:
        cols = [f[c] for f in frames]
        b = _as_numbers(ref[c])
        if b is not None:
            lo, hi = float(b.min()), float(b.max())
            for o, x in zip(out, cols):
                o.append(((_as_numbers(x).fillna(lo) - lo) / ((hi - lo) or 1.0)).to_numpy()[:, None])
        else:
            cats = pd.Index(pd.unique(pd.concat(cols).astype(str)))
            eye = np.eye(len(cats))
            for o, x in zip(out, cols):
                o.append(eye[cats.get_indexer(x.astype(str))])
    return [np.hstack(o).astype(np.float32) for o in out]


def _nearest_l1(x: np.ndarray, ref: np.ndarray, chunk: int = 512) -> np.ndarray:
    xt, rt = torch.from_numpy(x), torch.from_numpy(ref)
    return torch.cat([torch.cdist(xt[i:i + chunk], rt, p=1).min(1).values for i in range(0, len(xt), chunk)]).numpy()


def closer_than_unseen(d_new: np.ndarray, d_unseen: np.ndarray):
    """Chance that a new row sits closer to its nearest training row than an unseen real row does.

    d_new [n]: each synthetic row's distance to its closest training record; d_unseen [m]: the same for real
    rows the model never learnt from. Ties count half, so rows as new to the model as unseen real rows score
    0.5 in expectation and copies of training rows score about 1. Returns (share, 95 % interval), the
    interval from DeLong's standard error, as the prior's calibration uses on latents.
    """
    a = torch.as_tensor(np.asarray(d_new, dtype=float))
    b = torch.as_tensor(np.asarray(d_unseen, dtype=float))
    share, half = closer_share(a, b), 1.96 * closer_share_se(a, b)
    return share, (max(0.0, share - half), min(1.0, share + half))


def dcr_distances(synthetic: pd.DataFrame, real_train: pd.DataFrame, real_holdout: pd.DataFrame):
    """L1 distance of each synthetic row to its nearest training row and nearest holdout row.

    Numbers are scaled by the training range, categories one-hot. Returns (d_train [n], d_holdout [n]).
    """
    cols = list(real_train.columns)
    frames = [synthetic[cols].reset_index(drop=True), real_train[cols].reset_index(drop=True),
              real_holdout[cols].reset_index(drop=True)]
    x_syn, x_tr, x_ho = _dcr_matrices(frames, frames[1])
    return _nearest_l1(x_syn, x_tr), _nearest_l1(x_syn, x_ho)


def dcr(synthetic: pd.DataFrame, real_train: pd.DataFrame, real_holdout: pd.DataFrame,
        sdmetrics_subsample: int | None = None, distances=None) -> dict:
    """Distance to closest record.

    ``share_closer_to_train``: TabSyn's score, the share of synthetic rows whose L1 distance (numbers
    scaled by the training range, categories one-hot) to the nearest training row is smaller than to the
    nearest holdout row; with equal-size train and holdout, 0.5 is ideal and a copy of the training data
    scores 1.0. Also the SDMetrics ``DCROverfittingProtection`` and ``DCRBaselineProtection`` scores
    (1 is best) and ``exact_copies``: synthetic rows identical to a training row.
    ``sdmetrics_subsample`` (rows) speeds SDMetrics up on large tables; it subsamples synthetic and real
    rows independently, so a copied row may miss its original: leave it None for exact scores.
    ``distances``: the result of :func:`dcr_distances` for these frames, if already computed.
    """
    cols = list(real_train.columns)
    syn = synthetic[cols].reset_index(drop=True)
    d_tr, d_ho = distances if distances is not None else dcr_distances(syn, real_train, real_holdout)
    out = {"share_closer_to_train": float((d_tr < d_ho).mean()), "median_dcr_train": float(np.median(d_tr)),
           "median_dcr_holdout": float(np.median(d_ho)),
           "exact_copies": int(syn.merge(real_train[cols].drop_duplicates(), how="inner").shape[0])}
    try:
        from sdmetrics.single_table import DCRBaselineProtection, DCROverfittingProtection

        meta = sdmetrics_metadata(real_train)
        sub = None if sdmetrics_subsample is None else min(sdmetrics_subsample, len(syn), len(real_train),
                                                           len(real_holdout))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr, sy, ho = (_numpy_dtypes(f.rename(columns=str)) for f in (real_train[cols], syn, real_holdout[cols]))
            out["sdmetrics_overfitting_protection"] = float(DCROverfittingProtection.compute(
                tr, sy, ho, meta, None, num_rows_subsample=sub))
            out["sdmetrics_baseline_protection"] = float(DCRBaselineProtection.compute(
                tr, sy, meta, None, num_rows_subsample=sub))
    except ImportError:
        pass
    return out


def detection(synthetic: pd.DataFrame, real: pd.DataFrame) -> float:
    """SDMetrics LogisticDetection: 1 - (2 * AUC - 1) of a classifier telling real from synthetic (1 = indistinguishable)."""
    from sdmetrics.single_table import LogisticDetection

    real = _numpy_dtypes(real.rename(columns=str))
    syn = _numpy_dtypes(synthetic.rename(columns=str)[list(real.columns)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(LogisticDetection.compute(real, syn, sdmetrics_metadata(real)))


def _numpy_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Nullable integer columns as float (SDMetrics' detection writes fractions into its columns)."""
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_integer_dtype(out[c]):
            out[c] = out[c].astype("float64")
    return out


def target_associations(df: pd.DataFrame, target, task: str) -> dict:
    """How strongly each feature goes with the target, in [0, 1]: {feature: association}.

    Classification: Cramér's V between the target and the feature (numbers and datetimes cut into 10
    quantile bins first), so numeric and categorical features are on one scale and a multi-class target
    works. Regression: |Pearson r| for numeric features, the correlation ratio eta for categorical ones.
    Comparing real and synthetic values shows whether the rows keep the relationships a model learns.
    """
    y = df[target]
    out = {}
    for c in df.columns:
        if c == target:
            continue
        x = _as_numbers(df[c])
        if task == "regression":
            yv = _as_numbers(y)
            ok = yv.notna() & (x.notna() if x is not None else df[c].notna())
            if x is not None:
                r = np.corrcoef(x[ok], yv[ok])[0, 1] if ok.sum() > 2 and x[ok].std() > 0 else 0.0
                out[c] = round(float(abs(np.nan_to_num(r))), 4)
            else:  # correlation ratio: share of the target's variance explained by the categories
                g = yv[ok].groupby(df[c][ok].astype(str))
                tot = ((yv[ok] - yv[ok].mean()) ** 2).sum()
                between = (g.count() * (g.mean() - yv[ok].mean()) ** 2).sum()
                out[c] = round(float(np.sqrt(between / tot)) if tot > 0 else 0.0, 4)
            continue
        if x is not None:
            xb = pd.qcut(x.rank(method="first"), 10, labels=False, duplicates="drop") if x.nunique() > 10 else x
            xs = xb.astype("float").fillna(-1).astype(str)
        else:
            xs = df[c].astype(str)
        tab = pd.crosstab(xs, y.astype(str)).to_numpy().astype(float)
        n = tab.sum()
        if n == 0 or min(tab.shape) < 2:
            out[c] = 0.0
            continue
        expected = tab.sum(1, keepdims=True) * tab.sum(0, keepdims=True) / n
        chi2 = ((tab - expected) ** 2 / np.where(expected > 0, expected, 1)).sum()
        out[c] = round(float(np.sqrt(chi2 / n / (min(tab.shape) - 1))), 4)
    return out


def implied_values(real: pd.DataFrame, min_support: float = 0.01, min_confidence: float = 0.99,
                   min_expected: float = 10, max_values: int = 50) -> pd.DataFrame:
    """The rules "column a is v, so column b is w" that the real rows keep: one row per rule with ``if_column``,
    ``if_value``, ``then_column``, ``then_value``, ``support`` (share of real rows with a = v) and
    ``confidence`` (share of those with b = w).

    Only columns with at most ``max_values`` distinct values take part (categories, flags, small integer
    codes such as Adult's ``education-num``); missing values are a value. A rule needs ``support`` of at least
    ``min_support`` and ``confidence`` of at least ``min_confidence``, and must say more than chance: the rows
    with a = v would hold at least ``min_expected`` rows with another b if b were independent of a (so "9th
    grade, so no capital loss", true of 31 rows where 95 % of all rows have none, is no rule).
    """
    cols = [c for c in real.columns if 1 < real[c].nunique(dropna=False) <= max_values]
    text = {c: real[c].astype(str) for c in cols}
    shares = {c: t.value_counts() / len(real) for c, t in text.items()}  # each value's share of all rows
    n, rules = len(real), []
    for a in cols:
        for b in cols:
            if a == b:
                continue
            tab = pd.crosstab(text[a], text[b])  # [values of a, values of b]
            top, count, total = tab.idxmax(1), tab.max(1), tab.sum(1)
            base = shares[b].reindex(top.to_numpy()).to_numpy()  # share of all rows with b = w
            keep = ((total >= min_support * n) & (count >= min_confidence * total)
                    & (total * (1 - base) >= min_expected))
            rules += [(a, v, b, top[v], total[v] / n, count[v] / total[v]) for v in keep.index[keep]]
    return pd.DataFrame(rules, columns=["if_column", "if_value", "then_column", "then_value", "support",
                                        "confidence"])


def contradictions(synthetic: pd.DataFrame, real: pd.DataFrame, rules: pd.DataFrame | None = None, **kwargs) -> dict:
    """How often synthetic rows break what the real rows keep (:func:`implied_values`): a wife who is male,
    an ``education`` of 10th with an ``education-num`` other than 6.

    Returns {"rows": share of synthetic rows that break at least one rule, "rules": number of rules,
    "per_rule": the rules with ``broken``, the share of synthetic rows with a = v whose b is not w (NaN where
    none has a = v), worst first}. Real rows from the same population score about 1 - confidence per rule;
    a generator that draws columns independently given its latent scores far more. ``rules``: the result of
    :func:`implied_values` if already computed; ``kwargs`` go to it otherwise.
    """
    rules = implied_values(real, **kwargs) if rules is None else rules
    text = {c: synthetic[c].astype(str).to_numpy() for c in {*rules.if_column, *rules.then_column}}
    broken_any = np.zeros(len(synthetic), dtype=bool)
    broken = []
    for r in rules.itertuples(index=False):
        has = text[r.if_column] == r.if_value
        bad = has & (text[r.then_column] != r.then_value)
        broken_any |= bad
        broken.append(bad.sum() / has.sum() if has.any() else np.nan)
    per_rule = rules.assign(broken=broken).sort_values("broken", ascending=False, na_position="last")
    return {"rows": float(broken_any.mean()) if len(synthetic) else 0.0, "rules": len(rules),
            "per_rule": per_rule.reset_index(drop=True)}


def contradiction_summary(synthetic: pd.DataFrame, real: pd.DataFrame, rules: pd.DataFrame | None = None,
                          worst: int = 3) -> dict:
    """:func:`contradictions` as plain data for a result file: {"rows", "rules", "worst": the ``worst``
    most broken rules (among those some synthetic row meets) as dicts}."""
    c = contradictions(synthetic, real, rules)
    return {"rows": c["rows"], "rules": c["rules"], "worst": c["per_rule"].dropna().head(worst).to_dict("records")}


def rule_label(rule: dict) -> str:
    """One rule of :func:`implied_values` (a row of it as a dict) as text: ``a=v -> b=w``."""
    return f"{rule['if_column']}={rule['if_value']} -> {rule['then_column']}={rule['then_value']}"


def reconstruction(real: pd.DataFrame, rebuilt: pd.DataFrame) -> pd.DataFrame:
    """How well each column of ``real`` comes back in ``rebuilt`` (the same rows, e.g.
    ``synth.decode(synth.encode(real), temperature=0)``): one row per column.

    ``exact``: share of cells rebuilt exactly (missing for missing counts as exact); ``nrmse``: RMSE over
    cells present in both, divided by the real column's standard deviation (numbers and dates), NaN for
    categories; ``missing_match``: share of cells whose missingness is rebuilt.
    """
    if list(real.columns) != list(rebuilt.columns) or len(real) != len(rebuilt):
        raise ValueError("real and rebuilt must hold the same columns and the same number of rows")
    out = []
    for c in real.columns:
        a, b = real[c].reset_index(drop=True), rebuilt[c].reset_index(drop=True)
        na, nb = a.isna().to_numpy(), b.isna().to_numpy()
        same = np.array([(p and q) or (not p and not q and bool(x == y))
                         for x, y, p, q in zip(a.astype(object), b.astype(object), na, nb)], dtype=bool)
        nrmse = np.nan
        xa, xb = _as_numbers(a), _as_numbers(b)
        if xa is not None and xb is not None:
            xa, xb = xa.to_numpy(), xb.to_numpy()
            both = ~(na | nb)
            diff = xa[both] - xb[both]
            sd = float(np.nanstd(xa))
            nrmse = float(np.sqrt(np.mean(diff ** 2)) / sd) if both.any() and sd > 0 else np.nan
        out.append({"column": c, "exact": float(same.mean()), "nrmse": nrmse,
                    "missing_match": float((na == nb).mean())})
    return pd.DataFrame(out).set_index("column")


def privacy_risks(synthetic: pd.DataFrame, real_train: pd.DataFrame, real_control: pd.DataFrame, secret=None,
                  n_attacks: int = 500, n_neighbors: int = 10, seed: int = 0) -> dict:
    """Attack-based privacy risks with anonymeter (Giomi et al., PoPETS 2023), each with its 95 % interval.

    An attacker holding the synthetic rows tries to single out a training row (univariate queries), to
    link two halves of a training row's columns, and to infer ``secret`` (default: the last column) from
    the other columns. Each success rate is compared with the same attack on ``real_control``, real rows
    the generator never saw, so a risk measures what the synthetic rows leak about their training rows
    beyond what the population tells anyway: 0 is no leak, 1 a copy of the training rows.

    Returns ``{"singling_out" | "linkability" | "inference": {"risk": r, "ci": [low, high], "residual": e,
    "attack_rate": a, "control_rate": c}, "n_attacks", "secret"}``: ``risk`` is anonymeter's estimate, which
    is clipped at 0, so a mean of several is biased upwards; ``residual`` is the same estimate unclipped,
    (a - c) / (1 - c), whose mean is not. Needs anonymeter (``pip install --no-deps anonymeter`` plus numba
    and polars).
    """
    try:
        from anonymeter.evaluators import InferenceEvaluator, LinkabilityEvaluator, SinglingOutEvaluator
    except ImportError as e:
        raise ImportError("privacy_risks needs anonymeter: pip install numba polars && pip install --no-deps "
                          f"anonymeter ({e})") from e
    cols = [str(c) for c in real_train.columns]
    train, control = (_numpy_dtypes(d.rename(columns=str)[cols]).reset_index(drop=True)
                      for d in (real_train, real_control))
    syn = _numpy_dtypes(synthetic.rename(columns=str)[cols]).reset_index(drop=True)
    secret = cols[-1] if secret is None else str(secret)
    if secret not in cols:
        raise ValueError(f"secret {secret!r} is not a column of the real table")
    n = int(min(n_attacks, len(train), len(control), len(syn)))
    out = {"n_attacks": n, "secret": secret}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anonymeter warns when an attack is no better than random
        so = SinglingOutEvaluator(ori=train, syn=syn, control=control, n_attacks=n, seed=seed)
        half = len(cols) // 2
        link = LinkabilityEvaluator(ori=train, syn=syn, control=control, n_attacks=n, n_neighbors=n_neighbors,
                                    aux_cols=(cols[:half], cols[half:]))
        inf = InferenceEvaluator(ori=train, syn=syn, control=control, n_attacks=n, secret=secret,
                                 aux_cols=[c for c in cols if c != secret],
                                 regression=bool(pd.api.types.is_numeric_dtype(train[secret].dtype)
                                                 and train[secret].nunique() > 20))
        for name, ev, run in (("singling_out", so, lambda e: e.evaluate(mode="univariate")),
                              ("linkability", link, lambda e: e.evaluate(n_jobs=1)),
                              ("inference", inf, lambda e: e.evaluate(n_jobs=1))):
            try:
                res = run(ev).results(confidence_level=0.95)
                r, a, c = res.risk(), res.attack_rate.value, res.control_rate.value
                out[name] = {"risk": float(r.value), "ci": [float(r.ci[0]), float(r.ci[1])],
                             "residual": float((a - c) / (1 - c)) if c < 1 else 0.0,
                             "attack_rate": float(a), "control_rate": float(c)}
            except Exception as e:  # noqa: BLE001  (e.g. no singling-out query found: recorded, never fatal)
                out[name] = {"error": f"{type(e).__name__}: {e}"[:200]}
    return out
