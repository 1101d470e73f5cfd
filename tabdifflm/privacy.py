"""Sample-time privacy filter: new rows may not sit inside a training row's own neighbourhood.

A training row's neighbourhood is the ball around it whose radius is the distance to its nearest *other*
training row. A new row inside it is nearer that one row than any other training row is: it points at that
row (the "authenticity" test of Alaa et al., ICML 2022, "How faithful is your synthetic data?"). A row within
half that radius is nearer the training row than the midpoint between it and its neighbour: it is that
row's more than anyone's. ``share`` sets the ball's size as a share of the radius (1 = the whole
neighbourhood). Rows the model never saw land in such balls too, at a rate the validation slice measures
(:meth:`NearestRowFilter.base_rate`); the filter keeps new rows from landing there more often than that
("match") or at all ("strict").

Why it is needed: on Adult the linkability attack's excess links are rows that carry a training row's whole
categorical profile with its numbers moderately near, which neither the latents nor a 200-row DCR check
showed (docs/design.md, "Version 0.18: a privacy filter on the sampled rows").

Distances are L1 over the columns as :func:`tabdifflm.metrics.dcr` measures them: numbers scaled by the
training range (missing = -1, at least 1 from any value), a category mismatch 2 (as one-hot vectors differ).
The fitted filter holds every training row in this encoded form, so a saved model that has one must be kept
as carefully as the training table itself.
"""
from __future__ import annotations

import numpy as np
import torch

from .schema import Schema

MODES = ("match", "strict")


class RowEncoding:
    """Rows of plain values (schema order) -> (numbers [n, m] float32, category codes [n, c] int64)."""

    def __init__(self, schema: Schema):
        self.num = [i for i, c in enumerate(schema.columns) if c.kind != "categorical"]
        self.cat = [i for i, c in enumerate(schema.columns) if c.kind == "categorical"]
        cols = schema.columns
        self.low = np.array([float(cols[i].min if cols[i].min is not None else 0.0) for i in self.num])
        span = np.array([float(cols[i].max if cols[i].max is not None else 0.0) for i in self.num]) - self.low
        self.span = np.where(span > 0, span, 1.0)
        # category -> code; an unseen value or a missing one gets its own code, -1 / -2, so it matches nothing
        # but itself
        self.codes = [{v: k for k, v in enumerate(cols[i].categories)} for i in self.cat]

    def __call__(self, rows: list) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(rows)
        x = np.full((n, len(self.num)), -1.0)
        for j, i in enumerate(self.num):
            vals = [r[i] for r in rows]
            ok = np.array([v is not None for v in vals], dtype=bool)
            if ok.any():
                x[ok, j] = (np.array([float(v) for v in vals if v is not None]) - self.low[j]) / self.span[j]
        codes = np.array([[m.get(r[i], -1) if r[i] is not None else -2 for i, m in zip(self.cat, self.codes)]
                          for r in rows], dtype=np.int64).reshape(n, len(self.cat))
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(codes)


WIDE = 64  # a category column with more codes than this is compared directly, not through a one-hot block
ONE_HOT_WIDTH = 2048  # and so are the columns past this many one-hot slots in all (a table of many columns)


def _one_hot(ca: torch.Tensor, cb: torch.Tensor, wide: int = WIDE, most: int | None = None) -> tuple:
    """Category codes of a [na, c] and b [nb, c] -> (one-hot of a's narrow columns [na, k], the same for b
    [nb, k], the other columns' indices). Codes start at -2 (missing) and -1 (unseen), so each gets its own
    slot and, as in a direct comparison, matches only itself. Columns with more than ``wide`` codes, and
    those past ``most`` slots in all, stay out of the block, which costs rows x slots memory."""
    most = ONE_HOT_WIDTH if most is None else most
    sa, sb = ca + 2, cb + 2
    top = torch.zeros(ca.shape[1], dtype=torch.long)
    for s_ in (sa, sb):
        if len(s_):
            top = torch.maximum(top, s_.max(0).values)
    narrow, wide_cols, width = [], [], 0
    for j in range(ca.shape[1]):
        k = int(top[j]) + 1
        if k <= wide and width + k <= most:
            narrow.append(j)
            width += k
        else:
            wide_cols.append(j)

    def block(s_):
        parts = [torch.nn.functional.one_hot(s_[:, j], int(top[j]) + 1) for j in narrow]
        return torch.cat(parts, 1).float() if parts else torch.zeros(len(s_), 0)
    return block(sa), block(sb), wide_cols


def nearest(xa, ca, xb, cb, exclude_self: bool = False, chunk: int = 1024, budget: float = 2 ** 24):
    """Each row of a's nearest row of b: (distance [na], index [na]).

    xa [na, m], ca [na, c]: a's scaled numbers and category codes; xb, cb the same for b. The distance is
    sum |numbers| + 2 x category mismatches. ``exclude_self``: a is b, and a row is not its own neighbour.
    Exact, and quadratic in rows: the mismatches come from one matrix product of one-hot codes (matches =
    one-hot(a) @ one-hot(b).T), the numbers from an L1 ``cdist``, over chunks of a of at most ``chunk`` rows
    whose [rows, nb] distances fit in ``budget`` floats.
    """
    na, nb, c = len(xa), len(xb), ca.shape[1]
    if na == 0 or nb == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    rows = max(1, min(chunk, int(budget // nb)))
    oa, ob, wide_cols = _one_hot(ca, cb) if c else (None, None, [])
    ob_t = ob.T.contiguous() if c else None  # [k, nb]
    dist, idx = [], []
    for s in range(0, na, rows):
        e = min(na, s + rows)
        d = torch.cdist(xa[s:e], xb, p=1) if xa.shape[1] else torch.zeros(e - s, nb)  # [rows, nb]
        if c:  # + 2 x (c - matches): one-hot products count the narrow columns' matches
            d = torch.addmm(d + 2.0 * c, oa[s:e], ob_t, alpha=-2.0)
            for j in wide_cols:
                d -= 2.0 * (ca[s:e, j, None] == cb[None, :, j])
        if exclude_self:
            k = torch.arange(e - s)
            d[k, k + s] = float("inf")
        v, i = d.min(1)
        dist.append(v)
        idx.append(i)
    return torch.cat(dist), torch.cat(idx)


class NearestRowFilter:
    """Which new rows sit inside a training row's own neighbourhood, and how often unseen rows do.

    Built by :meth:`fit` from the training rows the model learnt from and the validation rows it never saw.
    ``radius[i]`` is training row i's distance to its nearest other training row; a row is *inside* (at
    ``share``) when its nearest training row j is nearer than ``share x radius[j]``. ``unseen_ratio`` [m]:
    each validation row's distance to its nearest training row over that row's radius, from which
    :meth:`base_rate` gives the share of rows independent of the training rows that are inside.
    """

    def __init__(self, schema: Schema, numbers: torch.Tensor, codes: torch.Tensor, radius: torch.Tensor,
                 unseen_ratio: torch.Tensor):
        self.encode = RowEncoding(schema)
        self.numbers, self.codes, self.radius, self.unseen_ratio = numbers, codes, radius, unseen_ratio

    @property
    def unseen_rows(self) -> int:
        return len(self.unseen_ratio)

    def base_rate(self, share: float = 1.0) -> float:
        """Share of the validation rows inside a ball of ``share`` x radius (0.0 without validation rows)."""
        return float((self.unseen_ratio < share).float().mean()) if len(self.unseen_ratio) else 0.0

    @classmethod
    def fit(cls, schema: Schema, train_rows: list, unseen_rows: list) -> "NearestRowFilter":
        """train_rows: rows the model learnt from (at least 2); unseen_rows: rows it never saw (may be empty,
        then the base rate is 0 and "match" acts as "strict")."""
        if len(train_rows) < 2:
            raise ValueError(f"the privacy filter needs at least 2 training rows, got {len(train_rows)}")
        enc = RowEncoding(schema)
        x, c = enc(train_rows)
        radius, _ = nearest(x, c, x, c, exclude_self=True)
        f = cls(schema, x, c, radius, torch.zeros(0))
        f.unseen_ratio = f.ratio(unseen_rows)
        return f

    def ratio(self, rows: list) -> torch.Tensor:
        """rows (schema order) -> [n]: distance to the nearest training row over that row's radius (inf where
        the radius is 0: a training row with a twin, which nothing is nearer than)."""
        if not rows:
            return torch.zeros(0)
        x, c = self.encode(rows)
        d, j = nearest(x, c, self.numbers, self.codes)
        r = self.radius[j]
        return torch.where(r > 0, d / r.clamp_min(1e-12), torch.full_like(d, float("inf")))

    def inside(self, rows: list, share: float = 1.0) -> torch.Tensor:
        """rows (schema order) -> bool [n]: the row is nearer its nearest training row than ``share`` x that
        row's distance to its own nearest other training row."""
        return self.ratio(rows) < share

    def tensors(self) -> dict:
        return {"numbers": self.numbers, "codes": self.codes, "radius": self.radius,
                "unseen_ratio": self.unseen_ratio}

    @classmethod
    def from_tensors(cls, schema: Schema, t: dict) -> "NearestRowFilter":
        return cls(schema, t["numbers"], t["codes"], t["radius"], t["unseen_ratio"])


class Quota:
    """Keeps the share of accepted rows that are inside at most ``rate``, over one call's rows in order.

    A row inside is accepted while (accepted inside + 1) <= rate x (accepted + 1); rows outside always are.
    Rows are independent draws, so which inside rows are turned away does not bias what stays.
    """

    def __init__(self, rate: float):
        self.rate, self.kept, self.kept_inside, self.rejected = float(rate), 0, 0, 0

    def admit(self, inside: bool) -> bool:
        if inside and self.kept_inside + 1 > self.rate * (self.kept + 1):
            self.rejected += 1
            return False
        self.kept += 1
        self.kept_inside += bool(inside)
        return True
