"""An evaluation report in one call: ``tabdifflm.report(real, synthetic, target=..., test=..., out="report/")``.

Computes what the benchmarks compute (SDMetrics quality and diagnostic scores, MLE, DCR, detection, each
feature's association with the target) and writes a page a person opens: ``report.html`` and
``report.md`` with figures (per-column distributions, correlation-difference heatmap, DCR histogram) and
``metrics.json``. Figures need matplotlib; without it the page says so and keeps the numbers.
"""
from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import (contradiction_summary, dcr, dcr_distances, detection, fidelity, mle, privacy_risks,
                      rule_label, sdmetrics_metadata, target_associations)
from .schema import check_frame


def guess_task(y: pd.Series) -> str:
    """"regression" for a float target with many values, else "classification"."""
    return "regression" if pd.api.types.is_float_dtype(y) and y.nunique() > 20 else "classification"


def evaluate(real: pd.DataFrame, synthetic: pd.DataFrame, target=None, test: pd.DataFrame | None = None,
             holdout: pd.DataFrame | None = None, task: str | None = None, privacy: bool = True) -> dict:
    """Every metric the inputs allow, as a dict: fidelity, detection and contradictions (the share of
    synthetic rows breaking a rule "a is v, so b is w" that the real rows keep, with the rules broken most,
    :func:`tabdifflm.metrics.contradictions`) always; DCR with ``holdout`` (real
    rows the generator never saw), and with it anonymeter's attack-based risks (singling out, linkability,
    inference of ``target`` or the last column; ``privacy=False`` skips them; see
    :func:`tabdifflm.metrics.privacy_risks`); MLE (a model trained on synthetic vs on real rows, scored on
    ``test``) and target associations with ``target``. Raises ValueError naming a missing column or argument."""
    return _evaluate(real, synthetic, target, test, holdout, task, privacy)[0]


def _evaluate(real, synthetic, target, test, holdout, task, privacy) -> tuple[dict, tuple | None]:
    """:func:`evaluate`, and the DCR distances (None without ``holdout``) for :func:`report`'s figure."""
    real, synthetic = check_frame(real), check_frame(synthetic)
    missing = [c for c in real.columns if c not in synthetic.columns]
    if missing:
        raise ValueError(f"the synthetic table lacks the real table's column(s) {missing}")
    if target is not None and target not in real.columns:  # before any work
        raise ValueError(f"target {target!r} is not a column of the real table")
    syn = synthetic[list(real.columns)]
    distances = None
    out = {"rows": {"real": len(real), "synthetic": len(syn)}, "fidelity": fidelity(syn, real),
           "detection": detection(syn, real)}
    out["contradictions"] = contradiction_summary(syn, real, worst=5)
    try:
        from sdmetrics.reports.single_table import DiagnosticReport

        rep = DiagnosticReport()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep.generate(real.rename(columns=str), syn.rename(columns=str), sdmetrics_metadata(real), verbose=False)
        out["diagnostic"] = {str(k): float(v) for k, v in rep.get_properties().set_index("Property")["Score"].items()}
    except Exception as e:  # noqa: BLE001  (an optional extra: recorded, never fatal)
        out["diagnostic"] = {"error": f"{type(e).__name__}: {e}"[:200]}
    if holdout is not None:
        holdout = check_frame(holdout)[list(real.columns)]
        distances = dcr_distances(syn, real, holdout)
        out["dcr"] = dcr(syn, real, holdout, distances=distances)
        if privacy:
            try:
                out["privacy"] = privacy_risks(syn, real, holdout, secret=target)
            except ImportError as e:  # anonymeter is optional
                out["privacy"] = {"error": str(e)}
    if target is not None:
        task = task or guess_task(real[target])
        out["task"] = task
        out["target_association"] = {"real": target_associations(real, target, task),
                                     "synthetic": target_associations(syn, target, task)}
        if test is not None:
            test = check_frame(test)
            try:
                out["mle"] = {"synthetic": mle(syn, test, target, task), "real": mle(real, test, target, task)}
            except ImportError as e:  # xgboost is an extra
                out["mle"] = {"error": f"MLE needs xgboost (pip install 'tabdifflm[report]'): {e}"}
    return out, distances


def figures(train: pd.DataFrame, synthetic: dict, dcr_dists: dict, out_dir: Path, name: str = "report") -> list:
    """Per-column real vs synthetic distributions, DCR histograms (if ``dcr_dists``), correlation-difference
    heatmaps; ``synthetic`` maps a method name to its rows. Returns the files written (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    cols = list(train.columns)
    methods = list(synthetic)
    fig, axes = plt.subplots(len(cols), 1, figsize=(7, 2.2 * len(cols)))
    for ax, c in zip(np.atleast_1d(axes), cols):
        if pd.api.types.is_numeric_dtype(train[c]) and not pd.api.types.is_bool_dtype(train[c]):
            lo, hi = np.nanpercentile(train[c].astype(float), [0.5, 99.5])
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
            ax.hist(train[c].dropna().astype(float), bins=bins, density=True, alpha=0.4, label="real", color="k")
            for m in methods:
                ax.hist(synthetic[m][c].dropna().astype(float), bins=bins, density=True, histtype="step", label=m)
        else:
            freq = train[c].astype(str).value_counts(normalize=True)
            top = freq.index[:12]
            x = np.arange(len(top))
            w = 0.8 / (len(methods) + 1)
            ax.bar(x, freq[top], w, label="real", color="k", alpha=0.4)
            for i, m in enumerate(methods, 1):
                ax.bar(x + i * w, synthetic[m][c].astype(str).value_counts(normalize=True).reindex(top).fillna(0), w,
                       label=m)
            ax.set_xticks(x + 0.4, top, rotation=30, fontsize=6, ha="right")
        ax.set_title(str(c), fontsize=8)
    np.atleast_1d(axes)[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}_columns.png", dpi=80)
    plt.close(fig)
    written.append(out_dir / f"{name}_columns.png")

    if dcr_dists:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for m, (d_tr, d_ho) in dcr_dists.items():
            ax.hist(d_tr - d_ho, bins=50, histtype="step", label=m)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("DCR to train - DCR to holdout (< 0: closer to train)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}_dcr.png", dpi=90)
        plt.close(fig)
        written.append(out_dir / f"{name}_dcr.png")

    num = [c for c in cols if pd.api.types.is_numeric_dtype(train[c]) and not pd.api.types.is_bool_dtype(train[c])]
    if len(num) >= 2:
        real_corr = train[num].astype(float).corr().to_numpy()
        fig, axes = plt.subplots(1, len(methods), figsize=(3 * len(methods), 3), squeeze=False)
        for ax, m in zip(axes[0], methods):
            diff = np.abs(synthetic[m][num].astype(float).corr().to_numpy() - real_corr)
            ax.imshow(diff, vmin=0, vmax=1, cmap="Reds")
            ax.set_title(f"{m}: mean {np.nanmean(diff):.3f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}_corr_diff.png", dpi=90)
        plt.close(fig)
        written.append(out_dir / f"{name}_corr_diff.png")
    return written


def _rows(res: dict) -> list[tuple[str, str]]:
    f = res["fidelity"]
    rows = [("real rows / synthetic rows", f"{res['rows']['real']} / {res['rows']['synthetic']}"),
            ("SDMetrics Column Shapes (1 = same distributions)", f"{f['column_shapes']:.3f}"),
            ("SDMetrics Column Pair Trends (1 = same correlations)", f"{f['column_pair_trends']:.3f}"),
            ("Detection (1 = a classifier cannot tell them apart)", f"{res['detection']:.3f}")]
    c = res.get("contradictions")
    if c:
        worst = "; ".join(f"{rule_label(w)} ({w['broken'] * 100:.0f} %)" for w in c["worst"][:3])
        rows.append((f"Rows breaking one of the {c['rules']} rules the real rows keep (a is v, so b is w; real "
                     "rows: about 0)", f"{c['rows']:.3f}" + (f": {worst}" if worst else "")))
    for k, v in res.get("diagnostic", {}).items():
        rows.append((f"SDMetrics diagnostic: {k}", f"{v:.3f}" if isinstance(v, float) else str(v)))
    if "dcr" in res:
        d = res["dcr"]
        rows += [("DCR: share of synthetic rows closer to the training rows than to the holdout (0.5 is ideal)",
                  f"{d['share_closer_to_train']:.3f}"), ("Exact copies of training rows", str(d["exact_copies"]))]
    p = res.get("privacy", {})
    if "error" in p:
        rows.append(("Attack-based privacy risks", p["error"]))
    for k, label in (("singling_out", "singling out"), ("linkability", "linkability"),
                     ("inference", f"inference of {p.get('secret')}")):
        if k in p:
            r = p[k]
            rows.append((f"Privacy risk (anonymeter, {p['n_attacks']} attacks), {label}: 0 = no leak, 95 % interval",
                         r["error"] if "error" in r else f"{r['risk']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"))
    if "mle" in res and "error" in res["mle"]:
        rows.append(("MLE", res["mle"]["error"]))
    elif "mle" in res:
        m = res["mle"]
        metric = m["synthetic"]["metric"]
        rows += [(f"MLE {metric}, model trained on synthetic rows", f"{m['synthetic']['mean']:.4f} ± {m['synthetic']['std']:.4f}"),
                 (f"MLE {metric}, model trained on real rows", f"{m['real']['mean']:.4f} ± {m['real']['std']:.4f}")]
    return rows


def _association_table(res: dict) -> list[list[str]]:
    ta = res.get("target_association")
    if not ta:
        return []
    return [["feature", "real", "synthetic"]] + [[str(k), f"{ta['real'][k]:.2f}", f"{ta['synthetic'][k]:.2f}"]
                                                  for k in ta["real"]]


def report(real, synthetic, target=None, test=None, holdout=None, task=None, out="report") -> dict:
    """Evaluate ``synthetic`` against ``real`` (:func:`evaluate`) and write ``out``/report.html, report.md,
    metrics.json and the figures. Returns the metrics dict (with ``"files"``: what was written)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res, distances = _evaluate(real, synthetic, target, test, holdout, task, privacy=True)
    real = check_frame(real)
    syn = check_frame(synthetic)[list(real.columns)]
    try:
        pngs = figures(real, {"synthetic": syn}, {"synthetic": distances} if distances is not None else {}, out)
        fig_note = ""
    except ImportError:
        pngs, fig_note = [], "Figures need matplotlib (pip install matplotlib); the numbers are complete."
    (out / "metrics.json").write_text(json.dumps(res, indent=1, default=float))
    rows, assoc = _rows(res), _association_table(res)
    md = ["# Synthetic data report", "", "| metric | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in rows]
    if assoc:
        md += ["", f"## Association of each feature with `{target}`", "", "| " + " | ".join(assoc[0]) + " |",
               "|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in assoc[1:]]
    md += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + ([fig_note] if fig_note else [])
    (out / "report.md").write_text("\n".join(md) + "\n")
    esc = html.escape
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>Synthetic data report</title>",
            "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}td,th{border:1px solid #ccc;"
            "padding:4px 8px}table{border-collapse:collapse}</style></head><body>",
            "<h1>Synthetic data report</h1><table><tr><th>metric</th><th>value</th></tr>"]
    page += [f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows] + ["</table>"]
    if assoc:
        page += [f"<h2>Association of each feature with {esc(str(target))}</h2><table>",
                 "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in assoc[0]) + "</tr>"]
        page += ["<tr>" + "".join(f"<td>{esc(x)}</td>" for x in r) + "</tr>" for r in assoc[1:]] + ["</table>"]
    page += ["<h2>Figures</h2>"] + [f"<p><img src='{esc(p.name)}' alt='{esc(p.stem)}'></p>" for p in pngs]
    if fig_note:
        page.append(f"<p>{esc(fig_note)}</p>")
    (out / "report.html").write_text("\n".join(page + ["</body></html>"]))
    res["files"] = [str(out / n) for n in ("report.html", "report.md", "metrics.json")] + [str(p) for p in pngs]
    return res
