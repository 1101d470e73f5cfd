"""Class balancing with DiffLM: new rows of the minority classes, conditioned on the class.

``DiffLMOversampler`` follows imbalanced-learn's sampler contract (``fit_resample(X, y) -> X_res, y_res``),
so it works inside ``imblearn.pipeline.Pipeline``; imbalanced-learn itself is not needed to use it.
"""
from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.utils import check_random_state

from .schema import check_frame
from .synthesizer import DiffLMSynthesizer


class DiffLMOversampler(BaseEstimator):
    """Oversample classes with synthetic rows written by DiffLM under the condition ``class == c``.

    Two sources of latents for the new rows. "neighbours" (default) works like SMOTE, in the latent space:
    a real row of the class, one of its ``k_neighbors`` nearest rows of the same class (by latent), a
    random point on the segment between their latents, written by the decoder with the class forced. The
    new rows stay where the class's real rows are, and the decoder keeps every value valid (categories
    from the table, numbers in range). "prior" draws new latents from the diffusion prior, steered to the
    class: more varied rows, but a rare class that the prior learnt from few rows comes out blurred.

    Parameters
    ----------
    sampling_strategy : "auto", "not majority", "minority", float or dict
        "auto" / "not majority": every class below the majority's count is raised to it; "minority": the
        smallest class only; a float r (two classes): the minority is raised to r x the majority's count;
        a dict {class: count}: each listed class is raised to that many rows.
    synthesizer : DiffLMSynthesizer or None
        The model to fit on X with y as one more column (cloned; None = the defaults).
    source : {"neighbours", "prior"}
        Where the new rows' latents come from (above).
    k_neighbors : int
        Same-class neighbours to pick from with ``source="neighbours"`` (SMOTE's default, 5); a class
        needs at least two rows.
    random_state : int, RandomState or None
        Seeds the fit (overrides the synthesizer's) and the sampling.


    Attributes
    ----------
    synthesizer_ : DiffLMSynthesizer
        The fitted model.
    sampling_strategy_ : dict
        {class: rows added}.
    """

    def __init__(self, sampling_strategy="auto", synthesizer=None, source="neighbours", k_neighbors=5,
                 random_state=None):
        self.sampling_strategy = sampling_strategy
        self.synthesizer = synthesizer
        self.source = source
        self.k_neighbors = k_neighbors
        self.random_state = random_state

    def _check(self, y: pd.Series, added: dict) -> None:
        if self.source not in ("neighbours", "prior"):
            raise ValueError(f"source must be 'neighbours' or 'prior', got {self.source!r}")
        k = self.k_neighbors
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k_neighbors must be a positive integer, got {k!r}")
        if self.source == "neighbours":
            few = {c: int((y == c).sum()) for c, n in added.items() if n > 0 and (y == c).sum() < 2}
            if few:
                raise ValueError(f"source='neighbours' needs at least two rows of each class it adds to; "
                                 f"{few} (class: rows) have fewer: use source='prior'")

    @staticmethod
    def _between_neighbours(Z, k_neighbors, n, rng):
        """n latents, each at a random point between a row's latent Z [m, D] and one of its nearest rows'."""
        from sklearn.neighbors import NearestNeighbors

        k = min(int(k_neighbors), len(Z) - 1)
        nb = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z, return_distance=False)[:, 1:]  # [m, k]
        a = rng.randint(0, len(Z), n)
        b = nb[a, rng.randint(0, k, n)]
        lam = rng.uniform(0, 1, (n, 1))
        return Z[a] + lam * (Z[b] - Z[a])  # [n, D]

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
        self._check(y, added)
        name = y.name if y.name is not None and y.name not in X.columns else "__class__"
        while name in X.columns:
            name = f"_{name}"
        table = X.reset_index(drop=True).assign(**{name: y.to_numpy()})
        synth = clone(self.synthesizer) if self.synthesizer is not None else DiffLMSynthesizer()
        rng = check_random_state(self.random_state)
        if self.random_state is not None:
            synth.set_params(random_state=int(rng.randint(0, 2**31 - 1)))
        synth.fit(table)
        parts = []
        Z = synth.encode(table) if self.source == "neighbours" and any(added.values()) else None
        for c, k in added.items():
            if k < 1:
                continue
            seed = int(rng.randint(0, 2**31 - 1))
            if Z is None:
                parts.append(synth.sample(k, random_state=seed, conditions={name: c}))
            else:
                z = self._between_neighbours(Z[(y == c).to_numpy()], self.k_neighbors, k, rng)
                parts.append(synth.decode(z, random_state=seed, conditions={name: c}))
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
