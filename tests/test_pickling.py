"""Pickle and joblib hold the fitted model the way save() does: the frozen decoder by reference."""
import pickle
import subprocess
import sys

import joblib
import pandas as pd

from tabdifflm import DiffLMSynthesizer


def test_pickle_leaves_the_decoder_out_and_keeps_the_sampling_stream(tiny_kwargs, mixed_df, tmp_path):
    s = DiffLMSynthesizer(**{**tiny_kwargs, "random_state": 5}).fit(mixed_df)
    s.save(tmp_path / "m.tdl")
    decoder_bytes = sum(p.numel() * p.element_size() for p in s.row_model().decoder.parameters())
    blob = pickle.dumps(s)
    # what save() writes and little else: before, the frozen decoder went inside too
    assert len(blob) < (tmp_path / "m.tdl").stat().st_size + min(decoder_bytes // 2, 100_000)
    again = pickle.loads(blob)
    assert again.get_params() == s.get_params() and again.get_params()["random_state"] == 5
    # the stream continues where it was: the next default-stream samples are the same
    pd.testing.assert_frame_equal(again.sample(6), s.sample(6))
    pd.testing.assert_frame_equal(again.sample(4, random_state=1), s.sample(4, random_state=1))
    unfitted = pickle.loads(pickle.dumps(DiffLMSynthesizer(latent_dim=3)))
    assert unfitted.latent_dim == 3 and not hasattr(unfitted, "schema_")


def test_joblib_dump_loads_and_samples_in_a_new_process(tmp_path, tiny_kwargs, mixed_df):
    s = DiffLMSynthesizer(**tiny_kwargs).fit(mixed_df)
    joblib.dump(s, tmp_path / "s.joblib")
    code = ("import joblib, sys; s = joblib.load(sys.argv[1]); "
            "print(len(s.sample(7, random_state=0)), list(s.feature_names_in_) == sys.argv[2].split(','))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.joblib"), ",".join(mixed_df.columns)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["7", "True"]
