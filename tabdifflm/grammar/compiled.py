"""The row grammar compiled to tensors: masks and state steps by table lookup, on any device.

The Python automata (:mod:`tabdifflm.grammar.automata`) stay the source of truth; compiling walks every
state they can reach once (a few hundred to a few thousand for a table) and stores:

- ``vocab`` [K]: every decoder token the grammar can emit, so logits are computed for K tokens only;
- ``bits`` [S, ceil(K/8)] uint8: which of them each state allows, one bit a token (as xgrammar's token
  bitmasks), so a table with ten thousand categories still fits in a few megabytes;
- ``edge_key`` [E] (sorted ``state * K + token``) and ``edge_next`` [E]: the transitions, looked up with
  ``searchsorted`` (as outlines-core's state -> token -> next-state index, without a dense S x K table);
- per state: ``forced`` (the one allowed token, else -1), ``choice`` (more than one allowed), ``group``
  (the latent head's (column, position) group, -1 outside values) and ``column`` (-1 for literal text).

Sampling and the training loss use these only, so the inner loops run without Python per token and
without moving anything to the host.
"""
from __future__ import annotations

import numpy as np
import torch

_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)  # np.packbits order: bit 7 first


class CompiledGrammar:
    """Tensor tables of a :class:`~tabdifflm.grammar.automata.RowGrammar` (build with ``RowGrammar.compile``).

    State ids are the automaton's own interned ids, so token/state lists from ``RowGrammar.encode`` index
    these tables directly.
    """

    def __init__(self, vocab, bits, edge_key, edge_next, forced, choice, group, column, start, done, max_tokens, pad,
                 n_columns):
        self.vocab, self.bits = vocab, bits
        self.edge_key, self.edge_next = edge_key, edge_next
        self.forced, self.choice, self.group, self.column = forced, choice, group, column
        self.start, self.done, self.max_tokens, self.pad = start, done, max_tokens, pad
        self.n_columns = n_columns

    _TENSORS = ("vocab", "bits", "edge_key", "edge_next", "forced", "choice", "group", "column")

    @classmethod
    def build(cls, g) -> "CompiledGrammar":
        """Walk every reachable state of the row automaton ``g`` and tabulate it."""
        local = {t: k for k, t in enumerate(g.vocab.tolist())}
        K = len(local)
        edges = []
        sid = 0
        while sid < g.n_states:  # next_state interns new states as it goes: the loop ends at the closure
            for t in g.allowed(sid):
                edges.append((sid, local[t], g.next_state(sid, t)))
            sid += 1
        S = g.n_states
        e = np.array(edges, dtype=np.int64).reshape(-1, 3)
        bits = np.zeros((S, (K + 7) // 8), dtype=np.uint8)
        np.bitwise_or.at(bits, (e[:, 0], e[:, 1] // 8), (1 << (7 - e[:, 1] % 8)).astype(np.uint8))
        key = e[:, 0] * K + e[:, 1]
        order = np.argsort(key)
        forced = torch.full((S,), -1, dtype=torch.long)
        n_allowed = np.bincount(e[:, 0], minlength=S)
        single = n_allowed[e[:, 0]] == 1
        forced[torch.from_numpy(e[single, 0])] = torch.from_numpy(e[single, 1])
        return cls(
            vocab=g.vocab.clone(),
            bits=torch.from_numpy(bits),
            edge_key=torch.from_numpy(key[order]),
            edge_next=torch.from_numpy(e[order, 2]),
            forced=forced,
            choice=torch.from_numpy(n_allowed > 1),
            group=torch.tensor([g.group_of(s) for s in range(S)], dtype=torch.long),
            column=torch.tensor([-1 if c is None else c for c in map(g.column_of, range(S))], dtype=torch.long),
            start=g.start, done=g.done, max_tokens=g.max_tokens(), pad=local[g.lits[-1][-1]], n_columns=len(g.cols),
        )

    def to(self, device) -> "CompiledGrammar":
        """A copy with every table on ``device`` (the same object if they are there already)."""
        device = torch.device(device)
        if self.vocab.device == device:
            return self
        moved = {k: getattr(self, k).to(device) for k in self._TENSORS}
        return CompiledGrammar(**moved, start=self.start, done=self.done, max_tokens=self.max_tokens, pad=self.pad,
                               n_columns=self.n_columns)

    @property
    def K(self) -> int:
        """Size of the sub-vocabulary."""
        return len(self.vocab)

    @property
    def n_states(self) -> int:
        return len(self.forced)

    def mask(self, states: torch.Tensor) -> torch.Tensor:
        """States [...] -> bool [..., K]: the sub-vocabulary tokens each state allows."""
        b = self.bits[states]  # [..., W]
        unpacked = (b[..., None] >> _SHIFTS.to(b.device)) & 1  # [..., W, 8]
        return unpacked.flatten(-2)[..., :self.K].bool()

    def step(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """States [N] and the sub-vocabulary tokens written [N] -> next states [N]. Done stays done; a token
        the state does not allow gives an undefined state (callers only write allowed tokens)."""
        idx = torch.searchsorted(self.edge_key, states * self.K + tokens).clamp_(max=len(self.edge_key) - 1)
        return torch.where(states == self.done, states, self.edge_next[idx])

    def to_local(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder token ids [...] -> indices into ``vocab`` (each must be a grammar token)."""
        return torch.searchsorted(self.vocab, tokens.to(self.vocab.device))

    def nbytes(self) -> int:
        """Memory of the tables, in bytes."""
        return sum(getattr(self, k).numel() * getattr(self, k).element_size() for k in self._TENSORS)
