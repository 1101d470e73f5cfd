"""The command line end to end on tiny models: fit, sample, evaluate, info, and its errors."""
import io
import json
import subprocess
import sys

import pandas as pd
import pytest

from tabdifflm import DiffLMSynthesizer
from tabdifflm.cli import main


@pytest.fixture(scope="module")
def adult_csv(tmp_path_factory, adult_small):
    d = tmp_path_factory.mktemp("cli")
    adult_small.iloc[:60].to_csv(d / "train.csv", index=False)
    adult_small.iloc[60:].to_csv(d / "test.csv", index=False)
    return d


@pytest.fixture(scope="module")
def tiny_args(tiny_encoder_dir, tiny_decoder_dir):
    params = dict(latent_dim=8, n_soft_tokens=2, n_prefix_tokens=2, batch_size=8, diffusion_train_steps=30,
                  diffusion_steps=4, decoder_dtype="float32")
    out = ["--encoder", tiny_encoder_dir, "--decoder", tiny_decoder_dir, "--epochs", "1", "-q"]
    for k, v in params.items():
        out += ["--param", f"{k}={v}"]
    return out


def test_fit_sample_evaluate_info(adult_csv, tiny_args, adult_small, capsys):
    model = adult_csv / "m.tdl"
    assert main(["fit", str(adult_csv / "train.csv"), "-o", str(model), *tiny_args]) == 0
    assert model.exists() and "privacy check on" in capsys.readouterr().err
    assert main(["sample", str(model), "-n", "25", "-o", str(adult_csv / "syn.parquet"), "--seed", "1", "-q"]) == 0
    syn = pd.read_parquet(adult_csv / "syn.parquet")
    assert len(syn) == 25 and list(syn.columns) == list(adult_small.columns)
    capsys.readouterr()
    assert main(["evaluate", str(adult_csv / "train.csv"), str(adult_csv / "syn.parquet"),
                 "--holdout", str(adult_csv / "test.csv"), "--report", str(adult_csv / "rep")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["fidelity"]["column_shapes"] <= 1 and 0 <= metrics["dcr"]["share_closer_to_train"] <= 1
    assert (adult_csv / "rep" / "report.html").exists() and (adult_csv / "rep" / "report_columns.png").exists()
    assert main(["info", str(model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in info["columns"]] == list(adult_small.columns)
    assert info["params"]["latent_dim"] == 8 and info["vae_steps"] >= 1
    assert info["stopped"]["vae"] in {"max_epochs", "time budget", "memorisation"}
    assert info["privacy_report"]["rows"] >= 1
    assert info["diffusion_sigma_min"] == 0.002  # 6 validation rows: too few to calibrate on
    assert info["diffusion_sigma_min_why"].startswith("6 validation rows, fewer than 20")


def test_sample_to_stdout_is_csv(adult_csv, tiny_args, capsys):
    model = adult_csv / "m2.tdl"
    assert main(["fit", str(adult_csv / "train.csv"), "-o", str(model), *tiny_args]) == 0
    capsys.readouterr()
    assert main(["sample", str(model), "-n", "4", "-o", "-", "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5  # header + 4 rows
    assert main(["sample", str(model), "-n", "4", "-o", "-", "-q", "--sigma-min", "1.0", "--seed", "3"]) == 0
    stopped = capsys.readouterr().out
    assert main(["sample", str(model), "-n", "4", "-o", "-", "-q", "--sigma-min", "0.002", "--seed", "3"]) == 0
    assert capsys.readouterr().out != stopped  # other latents, other rows
    assert main(["sample", str(model), "-n", "4", "-o", "-", "-q", "--seed", "3", "--privacy-filter", "strict"]) == 0
    m = DiffLMSynthesizer.load(model)
    strict = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(strict) == 4 and not m.privacy_filter_.inside(m._rows_of(strict), m.privacy_filter_radius).any()
    assert main(["sample", str(model), "-n", "4", "-o", "-", "--sigma-min", "low"]) == 1
    assert "--sigma-min must be 'auto' or a number, got 'low'" in capsys.readouterr().err


def test_fit_takes_sdv_metadata_json(adult_csv, tiny_args, adult_small, capsys):
    meta = {"METADATA_SPEC_VERSION": "SINGLE_TABLE_V1",
            "columns": {"education-num": {"sdtype": "categorical"}, "fnlwgt": {"sdtype": "drop"}}}
    (adult_csv / "metadata.json").write_text(json.dumps(meta))
    model = adult_csv / "m3.tdl"
    assert main(["fit", str(adult_csv / "train.csv"), "-o", str(model), "--metadata",
                 str(adult_csv / "metadata.json"), *tiny_args]) == 0
    assert main(["sample", str(model), "-n", "20", "-o", str(adult_csv / "syn3.csv"), "-q"]) == 0
    syn = pd.read_csv(adult_csv / "syn3.csv")
    assert list(syn.columns) == [c for c in adult_small.columns if c != "fnlwgt"]
    assert set(syn["education-num"]) <= set(adult_small["education-num"].iloc[:60])  # codes, not new numbers
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    kinds = {c["name"]: c["kind"] for c in json.loads(capsys.readouterr().out)["columns"]}
    assert kinds["education-num"] == "categorical" and "fnlwgt" not in kinds


@pytest.mark.parametrize("argv, message", [
    (["fit", "{train}", "-o", "m.tdl", "--metadata", "nowhere.json"], "--metadata: no file nowhere.json"),
    (["fit", "{train}", "-o", "m.tdl", "--metadata", "{bad_meta}"], "columns the table does not have: ['salary']"),
    (["fit", "nowhere.csv", "-o", "m.tdl"], "no file at nowhere.csv"),
    (["sample", "nowhere.tdl", "-n", "3", "-o", "x.csv"], "no model file"),
    (["fit", "{train}", "-o", "m.tdl", "--param", "latent_dim"], "name=value"),
    (["fit", "{train}", "-o", "m.tdl", "--param", "latnt_dim=3"], "unknown parameter"),
    (["fit", "{train}", "-o", "m.tdl", "--param", "latent_dim=-3"], "latent_dim"),
    (["fit", "{train}", "-o", "m.tdl", "--drop", "salary"], "no column"),
    (["evaluate", "{train}", "{train}", "--target", "nope", "--test", "{train}"], "--target 'nope'"),
])
def test_errors_exit_1_with_one_line_that_says_why(adult_csv, argv, message, capsys):
    (adult_csv / "bad_meta.json").write_text(json.dumps({"salary": "numerical"}))
    argv = [a.replace("{train}", str(adult_csv / "train.csv")).replace("{bad_meta}", str(adult_csv / "bad_meta.json"))
            for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("tabdifflm ")


def test_help_and_usage_errors_from_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "tabdifflm.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "fit" in out.stdout and "sample" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "tabdifflm.cli", "sample"], capture_output=True, text=True)
    assert bad.returncode == 2 and "required" in bad.stderr


def test_report_writes_a_page_with_its_figures(tmp_path, mixed_df):
    """tabdifflm.report: metrics, an HTML and a Markdown page that show every figure they name."""
    import re

    from tabdifflm import report

    real = mixed_df.iloc[:30].reset_index(drop=True)
    syn = mixed_df.iloc[10:40].sample(frac=1.0, random_state=0).reset_index(drop=True)
    test = mixed_df.iloc[::2].reset_index(drop=True)
    res = report(real, syn, target="member", test=test, holdout=mixed_df.iloc[30:].reset_index(drop=True),
                 out=tmp_path / "rep")
    page = (tmp_path / "rep" / "report.html").read_text()
    imgs = re.findall(r"<img src='([^']+)'", page)
    assert {"report_columns.png", "report_corr_diff.png", "report_dcr.png"} <= set(imgs)
    assert all((tmp_path / "rep" / i).stat().st_size > 1000 for i in imgs)
    assert "Column Shapes" in page and "MLE roc_auc" in page and "Association of each feature" in page
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "![report_columns](report_columns.png)" in md
    assert 0 <= res["fidelity"]["column_shapes"] <= 1 and "share_closer_to_train" in res["dcr"]
    assert set(res["mle"]) == {"synthetic", "real"}
    assert 0 <= res["contradictions"]["rows"] <= 1 and "rules the real rows keep" in page
    with pytest.raises(ValueError, match="nope"):
        report(real, syn, target="nope", out=tmp_path / "x")


def test_fit_with_differential_privacy_reports_the_spent_epsilon(adult_csv, tiny_args, capsys):
    pytest.importorskip("opacus")
    model = adult_csv / "dp.tdl"
    args = [*tiny_args, "--param", "aux_steps=1", "--param", "diffusion_train_steps=10"]
    assert main(["fit", str(adult_csv / "train.csv"), "-o", str(model), "--dp-epsilon", "4", *args]) == 0
    err = capsys.readouterr().err
    assert "differential privacy: epsilon" in err and "of 4 " in err and "privacy check on" not in err
    assert main(["info", str(model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["best_validation_nll"] is None  # every row trains under DP
    assert 0 < info["privacy_report"]["differential_privacy"]["epsilon"] <= 4
