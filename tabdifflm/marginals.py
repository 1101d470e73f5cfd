"""Categorical columns' frequencies put back after the prior's sampler is stopped early.

A sampler stopped at sigma returns a weighted mean of nearby training latents (docs/design.md, "Version
0.12"). Such a point lies between rows, where the decoder leans towards each column's most common value:
on Adult, stopped at 1.2, ``race`` came out White and ``workclass`` Private more often than in the
training rows, and most of the column-shape error was in the categorical columns. The correction is one
additive logit per (column position, token) choice of the categorical columns, the log ratio of how often
the training rows make that choice to how often the sampler's rows do, applied at sampling like the
latent head's own logits. It is estimated from rows the model writes and from the training rows' choice
counts (aggregate frequencies, as the schema's category sets are), so it needs no access to single rows.

``choice_counts`` counts the training rows' choices; :meth:`~tabdifflm.model.RowModel.generate` sums the
sampler's choice probabilities into the same shape (``choice_stats``), which estimates the same
frequencies with less noise than counting the tokens drawn; ``marginal_bias`` turns the two into logits.

Measured and not used: solving for the shift that makes the mean of the rows' own choice probabilities
equal the training frequency exactly (a multinomial model's intercepts with the logits as offsets). It
moves choices the latent had made all but certain, and on Adult it cost 0.012 AUC against the ratio's
two rounds (docs/design.md, "Version 0.14"). Also measured and not used: moving the excess probability of
the values chosen too often to those chosen too rarely whatever the latent says, which cannot follow the
latent back to a training row's value; on Adult it cost 0.008 AUC and 1.7 points of pair-trend error and
lowered no attack risk (docs/design.md, "Version 0.15").
"""
from __future__ import annotations

import torch

MIN_VISITS = 20  # a (column, position) group seen less often than this in either source is left alone
SMOOTHING = 0.5  # added to every count: a choice one source never makes gets a finite log ratio
MAX_SHIFT = 3.0  # nats: the correction moves a choice's logit by at most this


def choice_counts(grammar, token_rows, state_rows, columns) -> torch.Tensor:
    """How often rows choose each token in each (column, position) group of ``columns``.

    grammar: the :class:`~tabdifflm.grammar.RowGrammar`; token_rows / state_rows: per row, its decoder
    tokens and the state before each (``grammar.encode``); columns: the column indices to count.
    Returns [G, K] (the latent head's groups by sub-vocabulary tokens), zero outside ``columns``'s choices.
    """
    tables = grammar.tables
    counts = torch.zeros(grammar.n_groups, tables.K)
    if not token_rows or not columns:
        return counts
    toks = torch.tensor([t for row in token_rows for t in row], dtype=torch.long)
    states = torch.tensor([s for row in state_rows for s in row], dtype=torch.long)
    keep = tables.choice[states] & (tables.group[states] >= 0) & \
        torch.isin(tables.column[states], torch.tensor(sorted(columns), dtype=torch.long))
    counts.index_put_((tables.group[states[keep]], tables.to_local(toks[keep])), torch.ones(int(keep.sum())),
                      accumulate=True)
    return counts


def marginal_bias(train_counts: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """Additive logits [G, K] that move the sampler's choice frequencies towards the training rows'.

    train_counts [G, K]: :func:`choice_counts` of the training rows; sampled [G, K]: the sampler's summed
    choice probabilities in the same groups. Per group, both are turned into frequencies over the tokens
    either source chooses (with ``SMOOTHING``), and the logit is their log ratio, clipped to ``MAX_SHIFT``.
    Where the latent makes a choice all but certain, a shift moves it less than the ratio says, so one
    round under-corrects; the caller runs a second. Groups seen fewer than ``MIN_VISITS`` times in either
    source get 0.
    """
    seen = (train_counts > 0) | (sampled > 0)
    a = SMOOTHING * seen
    p_train = (train_counts + a) / (train_counts + a).sum(1, keepdim=True).clamp(min=1e-12)
    p_sampled = (sampled + a) / (sampled + a).sum(1, keepdim=True).clamp(min=1e-12)
    bias = torch.where(seen, p_train.clamp(min=1e-12).log() - p_sampled.clamp(min=1e-12).log(), torch.zeros(()))
    bias[(train_counts.sum(1) < MIN_VISITS) | (sampled.sum(1) < MIN_VISITS)] = 0.0
    return bias.clamp(-MAX_SHIFT, MAX_SHIFT)
