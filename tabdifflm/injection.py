"""Turning a latent into input for the frozen decoder: soft prompt, key/value memory, or embedding injection.

Every method also learns a short constant prefix (initialised from real token embeddings): what is the
same for every row (the table's layout) lives there, so the latent only has to carry the row.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

METHODS = ("soft_prompt", "kv_memory", "embedding")


class Injector(nn.Module):
    """Latent z [B, D] -> decoder inputs.

    ``prefix_embeds(z)`` gives the embeddings placed before the row's tokens [B, P, H];
    ``token_offset(z)`` an addition to every token embedding ([B, 1, H], embedding method only);
    ``memory(z)`` a DynamicCache with one extra key/value slot per layer (kv_memory only).
    """

    def __init__(self, method: str, latent_dim: int, decoder, n_soft_tokens: int = 8, n_prefix_tokens: int = 8,
                 seed: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown injection {method!r}; choose one of {METHODS}")
        self.method = method
        emb = decoder.get_input_embeddings().weight.detach().float()
        cfg = decoder.config.get_text_config() if hasattr(decoder.config, "get_text_config") else decoder.config
        hidden = emb.shape[1]
        g = torch.Generator().manual_seed(seed)
        # Scale so injected vectors look like real token embeddings to the frozen LLM (default init is
        # ~10x too large and the first hundred steps are spent shrinking it).
        emb_std = float(emb.std())
        self.prefix = nn.Parameter(emb[torch.randint(0, emb.shape[0], (n_prefix_tokens,), generator=g)].clone())
        self.n_soft = n_soft_tokens if method == "soft_prompt" else 0
        if method == "soft_prompt":
            self.proj = nn.Linear(latent_dim, hidden * n_soft_tokens)
            scale = emb_std
        elif method == "embedding":
            self.proj = nn.Linear(latent_dim, hidden)
            scale = emb_std * 0.5
        else:
            self.n_layers = cfg.num_hidden_layers
            self.n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            self.head_dim = getattr(cfg, "head_dim", None) or hidden // cfg.num_attention_heads
            self.proj = nn.Linear(latent_dim, self.n_layers * 2 * self.n_kv * self.head_dim)
            scale = 1.0
        with torch.no_grad():
            self.proj.weight.normal_(0, scale / latent_dim ** 0.5, generator=g)
            self.proj.bias.zero_()

    @property
    def n_prefix(self) -> int:
        """Positions placed before the row's first token."""
        return self.prefix.shape[0] + self.n_soft

    def prefix_embeds(self, z: torch.Tensor) -> torch.Tensor:
        B = z.shape[0]
        parts = [self.prefix.unsqueeze(0).expand(B, -1, -1)]
        if self.method == "soft_prompt":
            parts.append(self.proj(z).view(B, self.n_soft, -1))
        out = torch.cat(parts, 1)
        if self.method == "embedding":
            out = out + self.token_offset(z)
        return out

    def token_offset(self, z: torch.Tensor):
        return self.proj(z).unsqueeze(1) if self.method == "embedding" else None

    def memory(self, z: torch.Tensor, dtype) -> DynamicCache | None:
        return self.memory_from(self.proj(z), dtype) if self.method == "kv_memory" else None

    def memory_from(self, kv: torch.Tensor, dtype) -> DynamicCache:
        """The projection's output [B, layers * 2 * heads * head_dim] -> one key/value slot per layer."""
        kv = kv.to(dtype).view(kv.shape[0], self.n_layers, 2, self.n_kv, 1, self.head_dim)
        return DynamicCache([(kv[:, i, 0], kv[:, i, 1]) for i in range(self.n_layers)])
