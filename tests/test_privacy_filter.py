"""The sample-time privacy filter: which rows sit inside a training row's own neighbourhood."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tabdifflm import privacy
from tabdifflm.metrics import _dcr_matrices
from tabdifflm.privacy import NearestRowFilter, Quota, RowEncoding, nearest
from tabdifflm.schema import frame_rows, infer_schema


def _people(n, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(18, 90, n), "job": rng.choice(["clerk", "nurse", "chef", "farmer"], n),
                         "city": rng.choice([f"town{i}" for i in range(12)], n),
                         "weight": rng.normal(70, 12, n).round(1)})


def test_distances_are_dcrs_one_hot_l1_and_the_nearest_other_row_excludes_itself():
    a, b = _people(30, 0), _people(50, 1)
    schema = infer_schema(pd.concat([a, b]))
    enc = RowEncoding(schema)
    (xa, ca), (xb, cb) = enc(frame_rows(a, schema)), enc(frame_rows(b, schema))
    d, j = nearest(xa, ca, xb, cb, chunk=7)
    oa, ob = _dcr_matrices([a, b], pd.concat([a, b]))  # numbers scaled by the same range as the schema's
    full = torch.cdist(torch.from_numpy(oa), torch.from_numpy(ob), p=1)
    assert torch.allclose(d, full.min(1).values, atol=1e-4)
    assert torch.allclose(full[torch.arange(30), j], d, atol=1e-4)
    self_d, self_j = nearest(xb, cb, xb, cb, exclude_self=True)
    assert (self_j != torch.arange(50)).all() and (self_d > 0).all()


def test_the_one_hot_product_counts_mismatches_as_a_direct_comparison_does_for_every_kind_of_code(monkeypatch):
    """Narrow columns go through one-hot products, wide ones (over 64 codes) are compared directly; missing
    (-2) and unseen (-1) codes match only themselves, and a chunk boundary changes nothing."""
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.rand(23, 3, generator=g), torch.rand(41, 3, generator=g)
    widths = (3, 200, 5)  # the middle column is wide
    ca = torch.stack([torch.randint(-2, w, (23,), generator=g) for w in widths], 1)
    cb = torch.stack([torch.randint(-2, w, (41,), generator=g) for w in widths], 1)
    ca[:5, 1] = cb[:5, 1]  # make the wide column match somewhere
    ref = torch.cdist(xa, xb, p=1) + 2.0 * (ca[:, None, :] != cb[None, :, :]).sum(-1)
    for chunk in (4, 1024):
        d, j = nearest(xa, ca, xb, cb, chunk=chunk)
        assert torch.allclose(d, ref.min(1).values, atol=1e-5) and torch.allclose(ref[torch.arange(23), j], d)
    # a table of many columns: past the block's width the rest are compared directly
    monkeypatch.setattr(privacy, "ONE_HOT_WIDTH", 5)  # the first column's five slots (codes -2 to 2), no more
    assert privacy._one_hot(ca, cb)[2] == [1, 2] and torch.allclose(nearest(xa, ca, xb, cb)[0], ref.min(1).values)
    monkeypatch.undo()
    only_codes, _ = nearest(torch.zeros(23, 0), ca, torch.zeros(41, 0), cb)  # no numeric column
    assert torch.equal(only_codes, 2.0 * (ca[:, None, :] != cb[None, :, :]).sum(-1).min(1).values.float())
    self_ref = torch.cdist(xb, xb, p=1) + 2.0 * (cb[:, None, :] != cb[None, :, :]).sum(-1)
    self_ref.fill_diagonal_(float("inf"))
    self_d, _ = nearest(xb, cb, xb, cb, exclude_self=True, chunk=6)
    assert torch.allclose(self_d, self_ref.min(1).values, atol=1e-5)


def test_training_rows_are_all_inside_and_unseen_rows_only_at_the_base_rate():
    train, unseen = _people(300, 0), _people(300, 1)
    schema = infer_schema(train)
    rows = frame_rows(train, schema)
    f = NearestRowFilter.fit(schema, rows, frame_rows(unseen, schema))
    assert f.inside(rows).all()  # distance 0, below every radius (no duplicate rows here)
    assert 0.0 < f.base_rate() < 0.9  # unseen rows land inside only some of the time, training rows always
    new = frame_rows(_people(300, 2), schema)
    assert abs(f.inside(new).float().mean().item() - f.base_rate()) < 0.1
    # a smaller ball: fewer rows inside, each of them inside the whole neighbourhood too
    half = f.inside(new, 0.5)
    assert f.base_rate(0.5) < f.base_rate() and (half <= f.inside(new)).all() and half.sum() < f.inside(new).sum()
    # a row with an unseen category and a missing number is still placed (it matches nothing there)
    odd = [[None, "astronaut", "town1", 70.0]]
    assert f.inside(odd).shape == (1,)


def test_the_quota_keeps_the_inside_share_at_or_below_its_rate_and_every_outside_row():
    rng = np.random.default_rng(0)
    flags = rng.random(2000) < 0.4
    for rate in (0.0, 0.1, 0.3):
        q = Quota(rate)
        kept = [x for x in flags if q.admit(bool(x))]
        assert sum(kept) <= rate * len(kept) and len(kept) - sum(kept) == int((~flags).sum())
        assert sum(kept) >= rate * len(kept) - 1  # and no fewer than it may keep
        assert q.rejected == len(flags) - len(kept)
