"""The synthesizers the harness compares, behind one signature: fit(train, budget_s, seed) -> sampler."""
from __future__ import annotations

import pandas as pd


def _difflm(train: pd.DataFrame, budget_s: float, seed: int, **kw):
    from tabdifflm import DiffLMSynthesizer

    s = DiffLMSynthesizer(random_state=seed, max_time=budget_s, max_epochs=kw.get("epochs", 1000), verbose=False)
    s.fit(train)
    if kw.get("save_path"):  # kept for sampling-time studies (benchmarks/sampling_sweep.py)
        s.save(kw["save_path"])

    def sample(n):
        out = s.sample(n)
        return out, s.last_sample_stats_["first_try_valid_share"]

    vae = s.history_["vae"]
    sample.info = {"vae_steps": vae[-1]["step"] if vae else 0, "vae_stop": s.history_["stopped"].get("vae"),
                   "sigma_min": s.diffusion_sigma_min_,
                   # each level tried, with its share and bound, to read where the calibration stopped and why
                   "prior_calibration": s.history_.get("prior_calibration", {}).get("tried")}
    return sample


def _sdv(kind):
    def fit(train: pd.DataFrame, budget_s: float, seed: int, **kw):
        from sdv.metadata import Metadata
        from sdv.single_table import CTGANSynthesizer, GaussianCopulaSynthesizer, TVAESynthesizer

        meta = Metadata.detect_from_dataframes({"table": train})
        cls = {"ctgan": CTGANSynthesizer, "tvae": TVAESynthesizer, "gaussian_copula": GaussianCopulaSynthesizer}[kind]
        args = {} if kind == "gaussian_copula" else {"epochs": kw.get("epochs", 300)}
        import numpy as np
        import torch

        np.random.seed(seed)
        torch.manual_seed(seed)
        s = cls(meta, **args)
        s.fit({"table": train} if _takes_dict(s) else train)

        def sample(n):
            out = s.sample(n)
            out = out["table"] if isinstance(out, dict) else out
            return out[list(train.columns)], None

        return sample

    return fit


def _takes_dict(s) -> bool:
    # SDV 2.0's single-table synthesizers take {"table": df}; 1.x took the frame itself
    import sdv

    return int(sdv.__version__.split(".")[0]) >= 2


def _tabsyn(train: pd.DataFrame, budget_s: float, seed: int, **kw):
    from .baselines.tabsyn import TabSyn

    s = TabSyn(seed=seed).fit(train, budget_s)
    return lambda n: (s.sample(n), None)


def _great(train: pd.DataFrame, budget_s: float, seed: int, **kw):
    from .baselines.great import GReaTBaseline

    s = GReaTBaseline(seed=seed).fit(train, budget_s)

    def sample(n):
        out = s.sample(n, budget_s=budget_s)  # sampling gets its own budget of the same length
        return out, s.first_try_valid_share_

    return sample


def _real(train: pd.DataFrame, budget_s: float, seed: int, **kw):
    def sample(n):
        return train.sample(n, replace=n > len(train), random_state=seed).reset_index(drop=True), 1.0

    return sample


METHODS = {
    "real": _real,
    "tabsyn": _tabsyn,
    "great": _great,
    "difflm": _difflm,
    "ctgan": _sdv("ctgan"),
    "tvae": _sdv("tvae"),
    "gaussian_copula": _sdv("gaussian_copula"),
}
