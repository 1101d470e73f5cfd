"""Grammar-constrained batched generation from latents with the decoder's KV cache."""
from __future__ import annotations

import torch

from .decoder import run_base
from .logits import choice_logits


@torch.no_grad()
def generate_tokens(decoder, injector, grammar, z: torch.Tensor, temperature: float = 1.0, generator=None,
                    latent_head=None):
    """Write one row per latent. z [B, D] -> list of B token lists (each a complete row of the grammar).

    All rows advance in lockstep (one decoder call per token for the whole batch, reusing the KV cache);
    a row that is done is fed a dummy token and ignored. The grammar bounds every row's length, so this
    always ends after at most ``grammar.max_tokens()`` steps. ``latent_head`` (optional) shifts each
    choice's logits by the latent, exactly as in training (:func:`tabdifflm.logits.choice_logits`).
    """
    base = decoder.base_model
    emb = decoder.get_input_embeddings()
    dtype = decoder.dtype
    device = next(decoder.parameters()).device
    B = z.shape[0]
    h, cache = run_base(base, injector.prefix_embeds(z).to(dtype).to(device), injector.memory(z, dtype), True)
    h = h[:, -1]
    offset = injector.token_offset(z)
    table = latent_head(z) if latent_head is not None else None  # [B, G, K]
    state = [grammar.start] * B
    rows = [[] for _ in range(B)]
    pad = grammar.lits[-1][-1]
    vocab = grammar.vocab
    for _ in range(grammar.max_tokens()):
        nxt = torch.full((B,), pad, dtype=torch.long)
        live = [b for b in range(B) if state[b] != grammar.done]
        if not live:
            break
        forced = [b for b in live if grammar.n_choices(state[b]) == 1]
        for b in forced:
            nxt[b] = grammar.allowed(state[b])[0]
        choose = [b for b in live if grammar.n_choices(state[b]) > 1]
        if choose:
            idx = torch.tensor(choose)
            st = torch.tensor([state[b] for b in choose])
            bias = None if table is None else table[idx.to(table.device), grammar.groups(st).to(table.device)]
            logits = choice_logits(decoder, grammar, h[idx.to(h.device)], st, bias).cpu()
            if temperature <= 0:
                pick = logits.argmax(-1)
            else:
                pick = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(1)
            nxt[idx] = vocab[pick]
        for b in live:
            t = int(nxt[b])
            rows[b].append(t)
            state[b] = grammar.next_state(state[b], t)
        if all(s == grammar.done for s in state):
            break
        x = emb(nxt.to(device)[:, None]).float()
        if offset is not None:
            x = x + offset
        h, cache = run_base(base, x.to(dtype), cache, True)
        h = h[:, -1]
    return rows
