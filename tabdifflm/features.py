"""Exact per-column features of a row for the VAE encoder, beside the text encoder's reading of it.

A text encoder sees ``fAlpha: 39.8875`` as a few word pieces among many; how large the number is, or which
of two one-token classes the row has, reaches the pooled vector only faintly, and so the latent can miss
the columns a downstream model needs most (the target). These features give the encoder head each value
directly: numbers and datetimes as their training quantile mapped to [-1, 1] (robust to skew and scale),
categories one-hot (the most frequent ``MAX_ONE_HOT`` per column, the rest share a slot), and a missing
flag where the column had missing values.
"""
from __future__ import annotations

import numpy as np
import torch

from .schema import Schema

N_QUANTILES = 65
MAX_ONE_HOT = 64


class RowFeaturizer:
    """Fitted on training rows (lists of values in schema order); ``transform(rows)`` -> float32 [n, F]."""

    def __init__(self, schema: Schema, quantiles: list, slots: list):
        self.schema = schema
        self.quantiles = quantiles  # per column: training quantiles (numbers, datetimes) or None
        self.slots = slots  # per column: indices of the one-hot categories or None
        self._index = [{c: k for k, c in enumerate(col.categories)} if col.kind == "categorical" else None
                       for col in schema.columns]

    @classmethod
    def fit(cls, schema: Schema, rows: list) -> "RowFeaturizer":
        quantiles, slots = [], []
        for i, col in enumerate(schema.columns):
            vals = [r[i] for r in rows if r[i] is not None]
            if col.kind == "categorical":
                index = {c: k for k, c in enumerate(col.categories)}
                counts: dict = {}
                for v in vals:
                    counts[index[v]] = counts.get(index[v], 0) + 1
                slots.append(sorted(sorted(counts, key=lambda k: (-counts[k], k))[:MAX_ONE_HOT]))
                quantiles.append(None)
            else:
                x = np.asarray(vals, dtype=np.float64) if vals else np.zeros(1)
                quantiles.append(np.quantile(x, np.linspace(0, 1, N_QUANTILES)).tolist())
                slots.append(None)
        return cls(schema, quantiles, slots)

    @property
    def n_features(self) -> int:
        n = 0
        for i, col in enumerate(self.schema.columns):
            n += (len(self.slots[i]) + 1) if col.kind == "categorical" else 1
            n += int(col.has_missing)
        return n

    def transform(self, rows: list) -> torch.Tensor:
        out = np.zeros((len(rows), self.n_features), dtype=np.float32)
        j = 0
        for i, col in enumerate(self.schema.columns):
            miss = np.array([r[i] is None for r in rows])
            if col.kind == "categorical":
                pos = {c: k for k, c in enumerate(self.slots[i])}
                other, index = len(pos), self._index[i]
                for n, r in enumerate(rows):
                    if r[i] is not None:
                        # a category the fit never saw (encode() of new rows) counts as "other"
                        out[n, j + pos.get(index.get(r[i], -1), other)] = 1.0
                j += other + 1
            else:
                q = np.asarray(self.quantiles[i])
                x = np.array([np.nan if r[i] is None else float(r[i]) for r in rows])
                # rank within the training quantiles (ties share the middle), mapped to [-1, 1]
                lo = np.searchsorted(q, x, side="left")
                hi = np.searchsorted(q, x, side="right")
                u = (lo + hi) / 2 / len(q)
                out[:, j] = np.where(miss, 0.0, 2 * u - 1)
                j += 1
            if col.has_missing:
                out[:, j] = miss
                j += 1
        return torch.from_numpy(out)

    def to_dict(self) -> dict:
        return {"quantiles": self.quantiles, "slots": self.slots}

    @classmethod
    def from_dict(cls, schema: Schema, d: dict) -> "RowFeaturizer":
        return cls(schema, d["quantiles"], d["slots"])
