"""Command line: ``tabdifflm fit | sample | evaluate | info``.

    tabdifflm fit adult.csv -o adult.tdl --minutes 20
    tabdifflm sample adult.tdl -n 1000 -o synthetic.csv
    tabdifflm evaluate adult.csv synthetic.csv --target income --test adult_test.csv
    tabdifflm info adult.tdl

Tables are read and written as CSV (also ``.csv.gz``) or Parquet, chosen by the file name; ``-`` writes
CSV to standard output. Progress goes to standard error. Exit codes: 0 done, 1 the input or the model was
refused (the message says why), 2 the command line itself is wrong.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


class CLIError(Exception):
    """A problem with the user's input, reported as one line and exit code 1."""


def read_table(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"no file at {path}")
    name = p.name.lower()
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(p)
    if name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".tsv", ".txt")):
        return pd.read_csv(p, sep="\t" if name.endswith(".tsv") else ",")
    raise CLIError(f"{path}: unknown table format; use .csv, .csv.gz or .parquet")


def write_table(df: pd.DataFrame, path: str) -> None:
    if path == "-":
        df.to_csv(sys.stdout, index=False)
        return
    name = Path(path).name.lower()
    if not Path(path).parent.exists():
        raise CLIError(f"cannot write {path}: the folder {Path(path).parent} does not exist")
    if name.endswith((".parquet", ".pq")):
        df.to_parquet(path, index=False)
    elif name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zip")):
        df.to_csv(path, index=False)
    else:
        raise CLIError(f"{path}: unknown table format; use .csv, .csv.gz or .parquet")


def _value(text: str):
    """``--param`` values: JSON where it parses (numbers, true/false, null), the text itself otherwise."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_fit(a) -> None:
    from . import DiffLMSynthesizer

    df = read_table(a.data)
    params = {"random_state": a.seed, "verbose": not a.quiet}
    if a.minutes is not None:
        params["max_time"] = a.minutes * 60
    if a.epochs is not None:
        params["max_epochs"] = a.epochs
    if a.dp_epsilon is not None:
        params["dp_epsilon"] = a.dp_epsilon
    for key in ("encoder", "decoder", "device"):
        if getattr(a, key) is not None:
            params[key] = getattr(a, key)
    for kv in a.param or []:
        if "=" not in kv:
            raise CLIError(f"--param {kv!r}: write it as name=value")
        k, v = kv.split("=", 1)
        params[k] = _value(v)
    known = DiffLMSynthesizer().get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise CLIError(f"unknown parameter(s) {unknown}; the parameters are listed by "
                       "`python -m pydoc tabdifflm.DiffLMSynthesizer`")
    if a.metadata:
        try:
            params["metadata"] = json.loads(Path(a.metadata).read_text())
        except FileNotFoundError:
            raise CLIError(f"--metadata: no file {a.metadata}") from None
        except json.JSONDecodeError as e:
            raise CLIError(f"--metadata: {a.metadata} is not JSON ({e})") from None
    if a.drop:
        missing = [c for c in a.drop if c not in df.columns]
        if missing:
            raise CLIError(f"--drop: no column(s) {missing} in {a.data}")
        df = df.drop(columns=a.drop)
    s = DiffLMSynthesizer(**params).fit(df)
    s.save(a.output)
    print(f"fitted {len(df)} rows x {df.shape[1]} columns in {s.fit_seconds_:.0f} s; model written to {a.output}",
          file=sys.stderr)
    rep = s.privacy_report_
    if rep and "differential_privacy" in rep:
        dp = rep["differential_privacy"]
        print(f"differential privacy: epsilon {dp['epsilon']:.2f} spent of {dp['target_epsilon']:g} "
              f"(delta {dp['delta']:.2g})", file=sys.stderr)
    if rep and "closer_than_unseen" in rep:
        print(f"privacy check on {rep['rows']} new rows: closer to the training rows than unseen rows are "
              f"{rep['closer_than_unseen']:.2f} [{rep['interval_95'][0]:.2f}, {rep['interval_95'][1]:.2f}] "
              f"(0.5 = like unseen data, 1 = copies); {rep['exact_copies']} exact copies", file=sys.stderr)
    if rep and "filter" in rep:
        flt = rep["filter"]
        print(f"privacy filter ({flt['mode']}, radius {flt['radius']:g}): {flt['base_rate']:.1%} of "
              f"{flt['unseen_rows']} unseen rows sit inside a training row's own neighbourhood; sampled rows are "
              f"kept {'at or below that' if flt['mode'] == 'match' else 'out of them all'}", file=sys.stderr)


def cmd_sample(a) -> None:
    from . import DiffLMSynthesizer

    if a.n < 1:
        raise CLIError(f"-n must be at least 1, got {a.n}")
    s = DiffLMSynthesizer.load(a.model, decoder=a.decoder, encoder=a.encoder, device=a.device)
    if a.quiet:
        s.set_params(verbose=False)
    if a.temperature is not None:
        s.set_params(temperature=a.temperature)
    if a.sigma_min is not None:
        try:
            s.set_params(diffusion_sigma_min=a.sigma_min if a.sigma_min == "auto" else float(a.sigma_min))
        except ValueError:
            raise CLIError(f"--sigma-min must be 'auto' or a number, got {a.sigma_min!r}") from None
    if a.privacy_filter is not None:
        s.set_params(privacy_filter=None if a.privacy_filter == "off" else a.privacy_filter)
    if a.privacy_radius is not None:
        if not 0 < a.privacy_radius <= 1:
            raise CLIError(f"--privacy-radius must be in (0, 1], got {a.privacy_radius}")
        s.set_params(privacy_filter_radius=a.privacy_radius)
    if s.choice_bias_ is not None and s.marginal_rows and s._active_choice_bias() is None:  # changed above
        s.correct_marginals(s.marginal_rows, random_state=a.seed)
    df = s.sample(a.n, random_state=a.seed)
    write_table(df, a.output)
    if a.output != "-":
        print(f"wrote {len(df)} rows to {a.output}", file=sys.stderr)


def cmd_evaluate(a) -> None:
    from .reporting import evaluate, report

    real, syn = read_table(a.real), read_table(a.synthetic)
    missing = [c for c in real.columns if c not in syn.columns]
    if missing:
        raise CLIError(f"{a.synthetic} lacks the real table's column(s) {missing}")
    if a.target is not None:
        if a.target not in real.columns:
            raise CLIError(f"--target {a.target!r} is not a column of {a.real}")
        if not a.test:
            raise CLIError("--target needs --test: the real rows to score the models on")
    kw = {"target": a.target, "test": read_table(a.test) if a.test else None,
          "holdout": read_table(a.holdout) if a.holdout else None, "task": a.task}
    if a.report:
        out = report(real, syn, out=a.report, **kw)
        print(f"report written to {Path(a.report) / 'report.html'}", file=sys.stderr)
    else:
        out = evaluate(real, syn, **kw)
    text = json.dumps(out, indent=1, default=float)
    if a.output:
        Path(a.output).write_text(text)
        print(f"metrics written to {a.output}", file=sys.stderr)
    else:
        print(text)


def cmd_info(a) -> None:
    from .persistence import read_model_file

    _, meta = read_model_file(a.model)
    schema = meta["schema"]
    cols = schema.get("columns", [])
    vae = meta.get("history", {}).get("vae") or [{}]
    info = {"file": str(a.model), "tabdifflm_version": meta.get("tabdifflm_version"),
            "columns": [{k: c.get(k) for k in ("name", "kind", "dtype") if k in c} for c in cols],
            "decoder": meta["decoder_ref"].get("decoder"), "decoder_dtype": meta["decoder_ref"].get("dtype"),
            "encoder": meta["encoder_ref"].get("encoder"), "fit_seconds": meta.get("fit_seconds"),
            "vae_steps": vae[-1].get("step"),
            "best_validation_nll": min((r["val_nll"] for r in vae if "val_nll" in r), default=None),
            "stopped": meta.get("history", {}).get("stopped"), "privacy_report": meta.get("privacy_report"),
            "diffusion_sigma_min": meta.get("diffusion_sigma_min"),
            # whether the draws met the calibration's bar, or why it stopped where it did
            "diffusion_sigma_min_why": (meta.get("history", {}).get("prior_calibration") or {}).get("why"),
            # the categorical columns' frequencies put back at that stopping point (rows, columns, shifts)
            "marginal_correction": meta.get("history", {}).get("marginal_correction"),
            "params": meta["params"]}
    print(json.dumps(info, indent=1, default=str))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tabdifflm", description=__doc__.split("\n\n")[0],
                                epilog="Run `tabdifflm COMMAND --help` for each command's options.")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="learn a table and save the model",
                       description="Learn a table (CSV or Parquet) and write the model file.")
    f.add_argument("data", help="the table to learn (.csv, .csv.gz, .parquet)")
    f.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.tdl)")
    f.add_argument("--minutes", type=float, help="time budget for the whole fit (default: max_epochs decides)")
    f.add_argument("--epochs", type=int, help="VAE epochs (max_epochs)")
    f.add_argument("--seed", type=int, default=0, help="random_state (default 0: the same file gives the same model)")
    f.add_argument("--dp-epsilon", type=float, metavar="EPS",
                   help="train with differential privacy to this epsilon (needs opacus; see the fitting guide)")
    f.add_argument("--drop", nargs="+", metavar="COLUMN", help="columns to leave out (ids, free text)")
    f.add_argument("--metadata", metavar="JSON", help="column types where inference guesses wrong: SDV's metadata.json "
                   "or {column: sdtype} (categorical, numerical, datetime, id, drop)")
    f.add_argument("--encoder", help="text encoder: Hugging Face id or folder (default: packaged MiniLM)")
    f.add_argument("--decoder", help="decoder LLM: Hugging Face id, folder or .gguf (default: packaged SmolLM2)")
    f.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: auto)")
    f.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="any DiffLMSynthesizer parameter, e.g. --param latent_dim=32 (repeatable)")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=cmd_fit)

    s = sub.add_parser("sample", help="write synthetic rows from a model",
                       description="Write exactly N valid synthetic rows with the training columns.")
    s.add_argument("model", help="model file written by `tabdifflm fit`")
    s.add_argument("-n", type=int, required=True, help="number of rows")
    s.add_argument("-o", "--output", required=True, help="output table (.csv, .csv.gz, .parquet, or - for stdout)")
    s.add_argument("--seed", type=int, default=None, help="random_state of this draw")
    s.add_argument("--temperature", type=float, help="decoder temperature (0 = greedy)")
    s.add_argument("--sigma-min", metavar="SIGMA", help="where the prior's sampler stops: 'auto' (the level the "
                   "fit chose, default) or a number; 0.002 gives the sharper rows that sit nearer the training rows. "
                   "With this or --temperature, the categorical columns' correction is estimated again for the "
                   "new setting (the model's marginal_rows rows, before the N asked for)")
    s.add_argument("--privacy-filter", choices=["strict", "match", "off"],
                   help="keep rows out of the training rows' own neighbourhoods: 'strict' (never), 'match' (no "
                        "more often than unseen real rows land there) or 'off'; default: as fitted")
    s.add_argument("--privacy-radius", type=float, metavar="SHARE",
                   help="the neighbourhood's radius as a share of the distance to the nearest other training row "
                        "(0.5 by default: nearer a training row than the midpoint to its neighbour)")
    s.add_argument("--decoder", help="where the decoder lives now, if it moved")
    s.add_argument("--encoder", help="where the encoder lives now, if it moved")
    s.add_argument("--device", help="cpu, cuda, ...")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("evaluate", help="compare a synthetic table with the real one",
                       description="Column shapes and pair trends (SDMetrics), detection, and optionally DCR "
                                   "(--holdout) and machine-learning efficiency (--target, --test).")
    e.add_argument("real", help="the real rows the model was fitted on")
    e.add_argument("synthetic", help="the synthetic rows")
    e.add_argument("--target", help="column to predict for MLE")
    e.add_argument("--task", choices=["classification", "regression"], help="default: guessed from the target")
    e.add_argument("--test", help="real rows not used in fitting, to score MLE on")
    e.add_argument("--holdout", help="real rows not used in fitting, for DCR")
    e.add_argument("-o", "--output", help="write the metrics JSON here instead of standard output")
    e.add_argument("--report", metavar="DIR", help="also write a report page (report.html, report.md, figures) here")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("info", help="describe a model file", description="Columns, models, fit time, parameters.")
    i.add_argument("model")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"tabdifflm {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
