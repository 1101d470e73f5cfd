"""The decoder's next-token distribution at a grammar choice, shared by training and sampling.

Logits are computed only for the grammar's sub-vocabulary (``RowGrammar.vocab``, a few hundred tokens
instead of the decoder's ~49k), masked to what the state allows, and optionally shifted by the latent
logit head: a direct path from the latent to every (column, position) choice, so the latent has to
carry each column and the frozen decoder's output follows it (see docs/design.md, "latent logit head").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LatentLogitHead(nn.Module):
    """Latent z [B, D] -> additive logits [B, G, K] for each (column, position) group over the sub-vocabulary.

    Zero-initialised, so a fresh model writes exactly what the frozen decoder would; training moves each
    group's logits by a linear function of the latent (a product of experts with the LLM).
    """

    def __init__(self, latent_dim: int, n_groups: int, n_tokens: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_groups * n_tokens, latent_dim))
        self.bias = nn.Parameter(torch.zeros(n_groups * n_tokens))
        self.shape = (n_groups, n_tokens)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.linear(z.float(), self.weight, self.bias).view(z.shape[0], *self.shape)


def choice_logits(decoder, grammar, h: torch.Tensor, states: torch.Tensor, bias: torch.Tensor | None = None):
    """Masked logits at grammar choices.

    h [N, H]: decoder hidden states (after the final norm) that predict the next token; states [N]: the
    grammar state of each; bias [N, K] or None: the latent logit head's shift for each choice's group.
    Returns float32 logits [N, K] over ``grammar.vocab``, -inf where the state forbids the token.
    """
    head = decoder.get_output_embeddings()
    vocab = grammar.vocab.to(h.device)
    logits = F.linear(h, head.weight[vocab], None if head.bias is None else head.bias[vocab]).float()
    cap = getattr(decoder.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    if bias is not None:
        logits = logits + bias.to(logits.device)
    return logits.masked_fill(~grammar.local_mask(states.cpu()).to(h.device), float("-inf"))
