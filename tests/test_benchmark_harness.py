"""The benchmark runner end to end on seconds-long settings: every record and file it promises."""
import json

import numpy as np
import pandas as pd
import pytest

from benchmarks import run as bench


@pytest.fixture
def tiny_profile(monkeypatch, tmp_path):
    monkeypatch.setitem(bench.PROFILES, "test", {"train_rows": 60, "budget_s": {"default": 30}, "epochs": 1,
                                                 "mle_seeds": 1})
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    real_mle = bench.mle
    grid = [dict(n_estimators=10, min_child_weight=1, max_depth=3, gamma=0)]
    monkeypatch.setattr(bench, "mle", lambda syn, test, target, task, seeds: real_mle(
        syn, test.iloc[:300], target, task, seeds=seeds, grid=grid))
    return tmp_path


def test_runner_records_every_method_and_reports_failures(tiny_profile):
    # "broken" is unknown in the spawned worker: it fails there, and the runner must record it and go on
    res = bench.run_dataset("magic", ["real", "broken", "gaussian_copula"], "test")
    by = {r["method"]: r for r in res["runs"]}
    assert by["broken"]["status"] == "failed" and "KeyError: 'broken'" in by["broken"]["error"]
    real = by["real"]
    assert real["status"] == "ok" and real["valid_share"] == 1.0 and real["rows"] == 60
    assert real["dcr"]["exact_copies"] == 60 and real["dcr"]["share_closer_to_train"] > 0.95
    assert by["gaussian_copula"]["status"] == "ok" and by["gaussian_copula"]["dcr"]["exact_copies"] == 0
    for key in ("fit_seconds", "sample_seconds", "rows_per_second", "peak_rss_mb", "mle", "fidelity", "detection"):
        assert key in real
    saved = json.loads((tiny_profile / "test" / "magic.json").read_text())
    assert saved["versions"]["tabdifflm"] and len(saved["runs"]) == 3
    table = (tiny_profile / "test" / "magic.md").read_text()
    assert "| broken | failed" in table and "| real | ok" in table
    # the real rows are the training rows reordered: same associations (ties may bin differently)
    for f, v in saved["target_association_train"].items():
        assert real["target_association"][f] == pytest.approx(v, abs=0.03)
    assert "Association of each feature with `class`" in table and "| gaussian_copula |" in table
    # training rows break only the exceptions a rule allows (at most 1 % of the rows with a = v)
    assert real["contradictions"]["rows"] <= 0.01 and "Rows that contradict themselves" in table
    for fig in ("magic_columns.png", "magic_dcr.png", "magic_corr_diff.png"):
        assert (tiny_profile / "test" / fig).stat().st_size > 1000


def test_merge_keeps_other_methods(tiny_profile):
    bench.run_dataset("magic", ["real"], "test")
    res = bench.run_dataset("magic", ["gaussian_copula"], "test", merge=True)
    assert [r["method"] for r in res["runs"]] == ["real", "gaussian_copula"]
    assert (tiny_profile / "test" / "magic_gaussian_copula_columns.png").exists()


def test_privacy_benchmark_pools_attack_seeds():
    """Several attack runs -> per risk the mean, the range and the runs whose interval lies above 0; the
    table shows them, and a risk that failed in every run stays marked as failed."""
    from benchmarks.privacy import markdown, pooled

    def run(link, low):
        return {"singling_out": {"risk": 0.0, "ci": [0.0, 0.01]}, "linkability": {"risk": link, "ci": [low, 0.2]},
                "inference": {"error": "no secret"}}

    out = pooled([run(0.1, 0.02), run(0.0, 0.0), run(0.05, 0.0)])
    assert out["linkability"] == pytest.approx({"risk": 0.05, "min": 0.0, "max": 0.1, "above_zero": 1, "runs": 3})
    assert out["inference"] == {"error": "no secret"}
    table = markdown({"secret": "income", "rows": {"m": {**out, "dcr_share": 0.5, "exact_copies": 0}}})
    assert "| m | 0.000 (0.000-0.000; 0/3) | 0.050 (0.000-0.100; 1/3) | n/a | 50.0 % | 0 | | |" in table
    scored = {**out, "dcr_share": 0.5, "exact_copies": 0, "mle": 0.8712, "shapes_error": 3.1, "trends_error": 6.25}
    table = markdown({"secret": "income", "rows": {"m": scored}})
    assert "| n/a | 50.0 % | 0 | 0.871 | 3.10 / 6.25 |" in table


def test_privacy_benchmark_pools_sets_of_rows_with_the_unclipped_residual():
    """Two sets of rows, two attack seeds each: the residual is averaged within a set, then over the sets,
    with its standard error over the sets; the table says so."""
    from benchmarks.privacy import markdown, pooled

    def run(res):
        r = {"risk": max(res, 0.0), "ci": [0.0, 0.1], "residual": res}
        return {"singling_out": r, "linkability": r, "inference": r}

    out = pooled([run(-0.02), run(0.04), run(0.05), run(0.07)], samples=2)
    assert out["inference"]["residual"] == pytest.approx(0.035)  # sets: 0.01 and 0.06
    assert out["inference"]["residual_se"] == pytest.approx(0.025)  # sd 0.0354 over two sets / sqrt(2)
    assert out["inference"]["risk"] == pytest.approx(0.04)  # the clipped mean is higher
    table = markdown({"secret": "income", "sample_seeds": 2, "attack_seeds": 2,
                      "rows": {"m": {**out, "dcr_share": 0.5, "exact_copies": 0}}})
    assert "0.040 (0.000-0.070; 0/4); +0.035 ± 0.025" in table and "2 sets of rows x 2 attack seeds" in table


def test_privacy_benchmark_independent_sets_are_disjoint_blocks_after_train_and_control():
    """Each set of independent real rows is its own block of the pool: no row of the training or control
    rows, no row shared between sets; a pool too small for a set is an error naming the set."""
    from benchmarks.privacy import independent_block

    pool = pd.DataFrame({"id": np.arange(50)})
    sets = [independent_block(pool, 10, k)["id"].tolist() for k in range(3)]
    assert sets[0] == list(range(20, 30)) and sets[2] == list(range(40, 50))
    assert len(set(sum(sets, []))) == 30
    with pytest.raises(ValueError, match="independent set 4 of 10 rows"):
        independent_block(pool, 10, 3)


def test_coherence_benchmark_reads_settings_and_tables_its_rows():
    from benchmarks.coherence import markdown, settings

    assert settings("default=") == ("default", {})
    assert settings("readout=latent_readout=64,latent_dropout=0.25,injection=kv_memory") == (
        "readout", {"latent_readout": 64, "latent_dropout": 0.25, "injection": "kv_memory"})
    worst = [{"if_column": "relationship", "if_value": "Wife", "then_column": "sex", "then_value": "Female",
              "broken": 0.383}]
    table = markdown({"rules": 30, "rows": {"m": {"contradicting_rows": 0.4236, "worst": worst, "mle": 0.8704,
                                                  "shapes_error": 4.79, "trends_error": 9.72, "dcr_share": 0.5525}}})
    assert "| m | 42.4 % | 0.870 | 4.79 / 9.72 | 55.2 % | relationship=Wife -> sex=Female: 38 % |" in table
    assert "30 rules" in table


def test_seeds_table_gives_each_fits_share_of_contradicting_rows_where_it_was_recorded():
    """Fits recorded before the contradiction metric leave its cell empty, and their group's mean too."""
    from benchmarks.seeds import markdown

    def run(seed, version, broken=None):
        r = {"method": "difflm", "seed": seed, "version": version, "fit_seconds": 60.0,
             "mle": {"mean": 0.88, "std": 0.01},
             "fidelity": {"column_shapes_error": 3.0, "column_pair_trends_error": 6.0},
             "dcr": {"share_closer_to_train": 0.55, "exact_copies": 0}}
        return r if broken is None else {**r, "contradictions": {"rows": broken}}

    lines = markdown("adult", [run(0, "0.17.1", 0.15), run(1, "0.17.1", 0.2), run(0, "0.14.0")], "AUC").splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert lines[2].split("|")[-2].strip() == "breaking a rule" and len({len(c) for c in cells}) == 1
    last = {tuple(c[:3]): c[-1] for c in cells if c[0] == "difflm"}
    assert last[("difflm", "0", "0.17.1")] == "15.0 %" and last[("difflm", "1", "0.17.1")] == "20.0 %"
    assert last[("difflm", "mean of 2", "0.17.1")] == "17.5 %"
    assert last[("difflm", "0", "0.14.0")] == "" == last[("difflm", "mean of 1", "0.14.0")]


def test_privacy_benchmark_variants_stop_the_sampler_anywhere_and_name_bad_ones():
    from benchmarks.privacy import main, variant
    assert variant("default") == ({}, False) and variant("no correction") == ({"marginal_rows": 0}, False)
    assert variant("stopped at 2") == ({"diffusion_sigma_min": 2.0}, True)
    for bad in ("stopped at -1", "stopped at high", "stopped 1.4", "as fitted"):
        with pytest.raises(ValueError, match=repr(bad)):
            variant(bad)
    with pytest.raises(SystemExit):  # before any model is fitted or loaded
        main(["--variants", "default", "stopped at zero"])


def test_privacy_benchmark_samples_each_variant_of_a_loaded_model(monkeypatch):
    """Each variant is its own copy of the loaded model with its settings (the correction estimated again
    where the sampler stops elsewhere); the loaded model is left as it was."""
    from benchmarks import privacy

    class Fake:
        def __init__(self):
            self.params, self.corrected, self.marginal_rows = {}, False, 1000

        def set_params(self, **kw):
            self.params.update(kw)
            return self

        def correct_marginals(self, n, random_state=None):
            self.corrected = True

        def sample(self, n, random_state=None):
            return pd.DataFrame({"sigma": [self.params.get("diffusion_sigma_min")] * n, "seed": random_state})

    loaded = Fake()
    monkeypatch.setattr(privacy.DiffLMSynthesizer, "load", staticmethod(lambda path: loaded))
    monkeypatch.setitem(privacy.METHODS, "tvae", lambda train, epochs, seed: lambda n: (train.head(n), None))
    *_, gens, seconds = privacy.generators("adult", "m.tdl", 1, variants=("default", "stopped at 2"))
    assert gens["DiffLM"](0)["sigma"].isna().all() and gens["DiffLM, stopped at 2"](1)["sigma"].eq(2.0).all()
    assert gens["DiffLM, stopped at 2"](1)["seed"].eq(1).all() and "DiffLM (stopped at 2) correction" in seconds
    assert loaded.params == {} and not loaded.corrected
