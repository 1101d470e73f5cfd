"""Class balancing with DiffLM: new rows of the minority classes, conditioned on the class.

``DiffLMOversampler`` follows imbalanced-learn's sampler contract (``fit_resample(X, y) -> X_res, y_res``),
so it works inside ``imblearn.pipeline.Pipeline``; imbalanced-learn itself is not needed to use it.
"""
from __future__ import annotations

import numbers

import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.utils import check_random_state

from .schema import check_frame
from .synthesizer import DiffLMSynthesizer


class DiffLMOversampler(BaseEstimator):
    """Oversample classes with synthetic rows written by DiffLM under the condition ``class == c``.

    Parameters
    ----------
    sampling_strategy : "auto", "not majority", "minority", float or dict
        "auto" / "not majority": every class below the majority's count is raised to it; "minority": the
        smallest class only; a float r (two classes): the minority is raised to r x the majority's count;
        a dict {class: count}: each listed class is raised to that many rows.
    synthesizer : DiffLMSynthesizer or None
        The model to fit on X with y as one more column (cloned; None = the defaults).
    random_state : int, RandomState or None
        Seeds the fit (overrides the synthesizer's) and the sampling.


    Attributes
    ----------
    synthesizer_ : DiffLMSynthesizer
        The fitted model.
    sampling_strategy_ : dict
        {class: rows added}.
    """

    def __init__(self, sampling_strategy="auto", synthesizer=None, random_state=None):
        self.sampling_strategy = sampling_strategy
        self.synthesizer = synthesizer
        self.random_state = random_state

    def _added(self, counts: pd.Series) -> dict:
        s = self.sampling_strategy
        top = int(counts.max())
        if isinstance(s, str):
            if s in ("auto", "not majority"):
                return {c: top - int(n) for c, n in counts.items() if n < top}
            if s == "minority":
                c = counts.idxmin()
                return {c: top - int(counts[c])}
            raise ValueError(f"sampling_strategy {s!r} is not one of 'auto', 'not majority', 'minority', a "
                             "float or a dict")
        if isinstance(s, numbers.Real) and not isinstance(s, bool):
            if len(counts) != 2:
                raise ValueError(f"a float sampling_strategy needs two classes, y has {len(counts)}")
            if not 0 < s <= 1:
                raise ValueError(f"sampling_strategy must be in (0, 1], got {s}")
            c = counts.idxmin()
            return {c: max(0, int(round(s * top)) - int(counts[c]))}
        if isinstance(s, dict):
            out = {}
            for c, want in s.items():
                if c not in counts.index:
                    raise ValueError(f"sampling_strategy names class {c!r}, which y does not have")
                if want < counts[c]:
                    raise ValueError(f"sampling_strategy asks {want} rows of class {c!r}, which already has "
                                     f"{int(counts[c])}; an oversampler only adds rows")
                out[c] = int(want) - int(counts[c])
            return out
        raise TypeError(f"sampling_strategy must be a string, a float or a dict, got {type(s).__name__}")

    def fit_resample(self, X, y):
        """Fit DiffLM on X with y as a column, then add rows of the classes to raise. Returns (X_res, y_res):
        the original rows first, then the synthetic ones, as a DataFrame and a Series."""
        X = check_frame(X)
        y = pd.Series(y, name=getattr(y, "name", None))
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} rows and y {len(y)}")
        if y.isna().any():
            raise ValueError("y has missing values")
        counts = y.value_counts()
        added = self._added(counts)  # checked before the fit
        name = y.name if y.name is not None and y.name not in X.columns else "__class__"
        while name in X.columns:
            name = f"_{name}"
        table = X.reset_index(drop=True).assign(**{name: y.to_numpy()})
        synth = clone(self.synthesizer) if self.synthesizer is not None else DiffLMSynthesizer()
        rng = check_random_state(self.random_state)
        if self.random_state is not None:
            synth.set_params(random_state=int(rng.randint(0, 2**31 - 1)))
        synth.fit(table)
        parts = [synth.sample(k, random_state=int(rng.randint(0, 2**31 - 1)), conditions={name: c})
                 for c, k in added.items() if k > 0]
        self.synthesizer_ = synth
        self.sampling_strategy_ = added
        if not parts:
            return X, y
        new = pd.concat(parts, ignore_index=True)
        X_res = pd.concat([X, new.drop(columns=name)], ignore_index=True)
        y_res = pd.concat([y.reset_index(drop=True), new[name].astype(y.dtype)], ignore_index=True).rename(y.name)
        return X_res, y_res

    def fit(self, X, y):
        """imbalanced-learn samplers have ``fit``; it runs :meth:`fit_resample` and returns self."""
        self.fit_resample(X, y)
        return self
