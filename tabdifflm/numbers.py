"""The number head: each number column's value as one distribution given the latent, read digit by digit.

With magnitude-first numbers (``number_format="fixed"``) every digit written narrows the value to an
interval: after ``0`` and ``7`` of a three-digit ``pm2.5`` it lies in [70, 79]. The per-position latent
head gives each digit its own logits, so it must learn ten digits at every position as separate classes
and cannot say "about 105" without mixing 0xx and 1xx with the tens of both. The number head says it
directly: from the latent, a mixture of logistics over the column's value, and each digit choice gets the
log-probability of the interval it leaves open (given the digits before it). Chained over a number's
digits these are exactly the mixture discretised to the column's resolution, so one smooth function of the
latent (a location and a scale a component) sets every digit at once, and neighbouring values share what
is learnt: on Beijing's fixed latents it halved the held-out NLL a choice (docs/design.md).

Values are measured in the column's units (10^-decimals) and spread by a monotone map built from the
training quantiles (as the encoder's row features are), so skewed columns such as ``Iws`` are not one
spike. The head's output joins the latent head's table (:class:`~tabdifflm.model.LatentLogitHead`), so it
trains, samples, imputes and is saved with it. Tokens that leave no interval (a missing value's marker)
get no term from it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import N_QUANTILES

N_KNOTS = N_QUANTILES + 2  # the row features' training quantiles and the range's two ends
MAX_DIGITS = 15  # beyond, values in units are not exact float64 integers: such columns get no number head


class Cells(NamedTuple):
    """Where N choices sit in their number cells: numeric column ``k`` [N] (-1: not a number column), sign
    ``neg`` [N], digits written before ``i`` [N], and the value those digits spell ``prefix`` [N] (float64)."""
    k: torch.Tensor
    neg: torch.Tensor
    i: torch.Tensor
    prefix: torch.Tensor

    def __getitem__(self, idx):  # indexes the choices, not the fields
        return Cells(*(t[idx] for t in self))


class NumberHead(nn.Module):
    """Features [B, F] (the latent head's hidden layer, or the latent) -> a mixture of ``components``
    logistics over each number column's spread value, and the digit logits it implies.

    ``grammar`` is the :class:`~tabdifflm.grammar.RowGrammar` of the rows (fixed-width numbers). Buffers
    hold the columns' digit widths and ranges (read off the grammar, not saved) and the spreading map
    (saved with the model); :meth:`set_knots` sets the map from training values, otherwise it is linear
    over each column's range.
    """

    def __init__(self, grammar, in_dim: int, components: int = 4):
        super().__init__()
        from .grammar.automata import NumericGrammar

        g = grammar.tables
        if any(isinstance(a, NumericGrammar) and a.width is None for a in grammar.cols):
            raise ValueError("the number head needs number_format='fixed' (magnitude-first digits)")
        cols = self.columns_of(grammar)
        if not cols:
            raise ValueError(f"the number head needs a number column of at most {MAX_DIGITS} digits")
        self.columns = cols
        self.components = M = components
        C = len(cols)
        index = torch.full((len(grammar.cols),), -1, dtype=torch.long)
        index[cols] = torch.arange(C)
        first = grammar.cols[cols[0]]
        digit_of = {t: d for d, t in enumerate(first.digits)}
        vocab = g.vocab.tolist()
        digit = torch.tensor([digit_of.get(t, -1) for t in vocab])  # [K]
        minus = torch.tensor([t == first.tok["-"] for t in vocab])  # [K]
        # read off the grammar (again at load), so not saved: only the spreading map is learnt from data
        derived = {"index": index,  # schema column -> number column, -1 for others
                   "digit": digit, "minus": minus,
                   "cand": ((digit >= 0) | minus).nonzero().squeeze(1),  # [V] the tokens that leave an interval
                   # digits a value has, per sign [C, 2]; the smallest value in units [C]
                   "width": torch.tensor([[grammar.cols[i].width[s] + grammar.cols[i].decimals
                                           for s in (False, True)] for i in cols]),
                   "low": torch.tensor([float(grammar.cols[i].unit_range[0]) for i in cols], dtype=torch.float64)}
        for name, t in derived.items():
            self.register_buffer(name, t, persistent=False)
        self.decimals = [grammar.cols[i].decimals for i in cols]
        knots = torch.zeros(C, N_KNOTS, dtype=torch.float64)
        for c, i in enumerate(cols):
            lo, hi = grammar.cols[i].unit_range
            knots[c] = torch.linspace(lo - 0.5, hi + 0.5, N_KNOTS, dtype=torch.float64)
        self.register_buffer("knots", knots)  # [C, Q] values in units, increasing
        self.register_buffer("levels", torch.linspace(-1, 1, N_KNOTS, dtype=torch.float64).expand(C, -1).clone())
        self.proj = nn.Linear(in_dim, C * 3 * M)
        with torch.no_grad():  # a broad start: components spread over the range, wide scales
            self.proj.weight.mul_(0.1)
            b = self.proj.bias.view(C, 3, M)
            b[:, 0] = 0.0
            b[:, 1] = torch.linspace(-0.75, 0.75, M)
            b[:, 2] = -1.0

    @staticmethod
    def columns_of(grammar) -> list[int]:
        """The schema columns a number head models: number columns of at most ``MAX_DIGITS`` digits."""
        from .grammar.automata import NumericGrammar

        return [i for i, a in enumerate(grammar.cols) if isinstance(a, NumericGrammar) and a.width is not None
                and max(a.width.values()) + a.decimals <= MAX_DIGITS]

    @property
    def n_params(self) -> int:
        """Width of the head's output per row (its part of the latent head's table)."""
        return self.proj.out_features

    def set_knots(self, values: list) -> None:
        """Spread each number column by its training distribution: ``values[c]`` the non-missing values of
        number column ``c`` (in the column's own scale). The map sends the range's ends to -1 and 1 and the
        training quantiles evenly between them."""
        for c, i in enumerate(self.columns):
            v = np.asarray(values[c], dtype=np.float64)
            if v.size == 0:
                continue
            lo, hi = float(self.knots[c, 0]), float(self.knots[c, -1])
            levels = np.linspace(0, 1, N_QUANTILES)
            q = np.quantile(np.round(v * 10.0 ** self.decimals[c]), levels)
            u, inv = np.unique(q, return_inverse=True)  # tied quantiles (a frequent value) share one knot
            lev = np.bincount(inv, weights=levels) / np.bincount(inv)  # at their mean level
            xs = np.concatenate([[lo], u, [hi]])
            ls = np.concatenate([[0.0], lev, [1.0]])
            keep = np.concatenate([[True], np.diff(xs) > 0])
            xs, ls = xs[keep], ls[keep]
            pad = N_KNOTS - len(xs)  # beyond the range: more knots at level 1, never reached
            xs = np.concatenate([xs, xs[-1] + np.arange(1, pad + 1)])
            ls = np.concatenate([ls, np.ones(pad)])
            self.knots[c] = torch.from_numpy(xs)
            self.levels[c] = torch.from_numpy(2 * ls - 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Features h [B, F] -> the mixtures' parameters [B, C * 3 * M] (weight logits, locations, scales)."""
        return self.proj(h)

    # -- where each choice is in its number --------------------------------------------------------------
    def cells(self, columns: torch.Tensor, tokens: torch.Tensor) -> Cells:
        """Teacher-forced rows: the schema column of each position's state columns [B, L] (-1 in literal
        text) and the sub-vocabulary ids written there tokens [B, L] -> the :class:`Cells` [B, L] before
        each token."""
        B, L = columns.shape
        out = [torch.empty(B, L, dtype=t, device=columns.device)
               for t in (torch.long, torch.bool, torch.long, torch.float64)]
        state = self.start(B, columns.device)
        for j in range(L):
            state = self.enter(state, columns[:, j])
            for o, s in zip(out, state):
                o[:, j] = s
            state = self.advance(state, tokens[:, j])
        return Cells(*out)

    def start(self, B: int, device) -> Cells:
        """The state of B rows before their first token."""
        return Cells(torch.full((B,), -1, dtype=torch.long, device=device),
                     torch.zeros(B, dtype=torch.bool, device=device),
                     torch.zeros(B, dtype=torch.long, device=device),
                     torch.zeros(B, dtype=torch.float64, device=device))

    def enter(self, state: Cells, columns: torch.Tensor) -> Cells:
        """Rows' state at a position whose grammar state is in schema column columns [B] (-1: literal)."""
        k = torch.where(columns >= 0, self.index[columns.clamp(min=0)], -1)
        new = k != state.k
        return Cells(k, state.neg & ~new, torch.where(new, 0, state.i), torch.where(new, 0.0, state.prefix))

    def advance(self, state: Cells, tokens: torch.Tensor) -> Cells:
        """The state after writing the sub-vocabulary tokens [B]."""
        d = self.digit[tokens]
        inside = state.k >= 0
        is_digit = (d >= 0) & inside
        return Cells(state.k, state.neg | (self.minus[tokens] & inside),
                     state.i + is_digit.long(),
                     torch.where(is_digit, state.prefix * 10 + d.clamp(min=0), state.prefix))

    # -- the digit logits --------------------------------------------------------------------------------
    def logits(self, params: torch.Tensor, cells: Cells) -> torch.Tensor:
        """Mixture parameters of each choice's row params [N, C * 3 * M] and where the choices are cells
        [N] -> additive logits [N, K]: log-probability of the interval each digit (or ``-``) leaves open;
        0 for other tokens and for choices outside number columns."""
        # every choice is computed, those outside numbers as if in the first number column, then zeroed:
        # selecting the number choices first would ask the host for their count at every sampled token
        N, K = len(params), len(self.digit)
        C, M = len(self.columns), self.components
        c = cells._replace(k=cells.k.clamp(min=0))
        par = params.view(-1, C, 3 * M)[torch.arange(N, device=params.device), c.k]  # [N, 3M]
        lo, hi = self._intervals(c, self.cand)  # [N, V] each, in units
        t0, t1 = self._spread(c.k, lo - 0.5), self._spread(c.k, hi + 0.5)
        w, mu, s = par.double().view(-1, 3, M).unbind(1)
        scale = (F.softplus(s) + 1e-3)[:, None]  # [N, 1, M]
        mass = (torch.sigmoid((t1[..., None] - mu[:, None]) / scale)
                - torch.sigmoid((t0[..., None] - mu[:, None]) / scale))  # [N, V, M]
        lp = (mass.clamp(min=1e-30).log() + torch.log_softmax(w, -1)[:, None]).logsumexp(-1)
        out = torch.zeros(N, K, device=params.device)
        out[:, self.cand] = torch.where((cells.k >= 0)[:, None], lp.float(), 0.0)
        return out

    def _intervals(self, c: Cells, cand: torch.Tensor):
        """Smallest and largest value [n, V] (units) each candidate token leaves open."""
        n_digits = self.width[c.k, c.neg.long()]  # [n]
        step = 10.0 ** (n_digits - 1 - c.i).clamp(min=0).double()[:, None]  # [n, 1]
        d = self.digit[cand].clamp(min=0).double()[None]  # [1, V]
        lo = (c.prefix[:, None] * 10 + d) * step
        hi = lo + step - 1
        neg = c.neg[:, None]
        lo, hi = torch.where(neg, -hi, lo), torch.where(neg, (-lo).clamp(max=-1), hi)  # -0 is written as 0
        sign = self.minus[cand][None]  # '-': every negative value
        lo = torch.where(sign, self.low[c.k][:, None], lo)
        hi = torch.where(sign, torch.full_like(hi, -1.0), hi)
        return lo, hi

    def _spread(self, k: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Values y [n, V] (units) of number columns k [n] -> the spread scale in [-1, 1] (piecewise linear)."""
        kn, lv = self.knots[k], self.levels[k]  # [n, Q]
        j = torch.searchsorted(kn, y.contiguous()).clamp(1, kn.shape[1] - 1)
        x0, x1 = kn.gather(1, j - 1), kn.gather(1, j)
        l0, l1 = lv.gather(1, j - 1), lv.gather(1, j)
        return l0 + ((y - x0) / (x1 - x0).clamp(min=1e-9)).clamp(0, 1) * (l1 - l0)
