"""TabSyn (Zhang et al., ICLR 2024), reimplemented from the paper's description (REFERENCE.md section 2).

VAE over per-column tokens (numbers x*w+b, categories embedded, plus [CLS]), 2-layer 1-head transformers
for mu, logvar and the decoder, token size 4; loss MSE(numbers) + CE(categories) + beta*KL with beta from
1e-2, x0.7 on a validation stall, down to 1e-5. Unlike the original, checkpoints are chosen on a slice of
the *training* data, never on the test set. The latent (mu without [CLS], flattened) is then modelled by
the same EDM diffusion tabdifflm uses (MLP 1024 -> 2048 -> 2048 -> 1024).
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import QuantileTransformer
from torch import nn

from tabdifflm.diffusion import MLPDenoiser, sample_heun
from tabdifflm.training import train_diffusion

D_TOKEN = 4


class Tokenizer(nn.Module):
    def __init__(self, n_num, cat_sizes):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_num + 1, D_TOKEN) / math.sqrt(D_TOKEN))  # +1: [CLS]
        self.b = nn.Parameter(torch.zeros(n_num + len(cat_sizes) + 1, D_TOKEN))
        self.offsets = torch.tensor([0] + list(np.cumsum(cat_sizes)[:-1]), dtype=torch.long)
        self.cat_emb = nn.Embedding(max(sum(cat_sizes), 1), D_TOKEN)

    def forward(self, x_num, x_cat):
        x = torch.cat([torch.ones(len(x_num), 1), x_num], 1)
        tokens = self.w[None] * x[:, :, None]
        if x_cat.shape[1]:
            tokens = torch.cat([tokens, self.cat_emb(x_cat + self.offsets[None])], 1)
        return tokens + self.b[None]


def _transformer():
    layer = nn.TransformerEncoderLayer(D_TOKEN, 1, dim_feedforward=32 * D_TOKEN, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


class VAE(nn.Module):
    def __init__(self, n_num, cat_sizes):
        super().__init__()
        self.n_num = n_num
        self.tok = Tokenizer(n_num, cat_sizes)
        self.enc_mu, self.enc_logvar, self.dec = _transformer(), _transformer(), _transformer()
        self.num_out = nn.Linear(D_TOKEN, 1)
        self.cat_out = nn.ModuleList(nn.Linear(D_TOKEN, k) for k in cat_sizes)

    def encode(self, x_num, x_cat):
        t = self.tok(x_num, x_cat)
        return self.enc_mu(t), self.enc_logvar(t)

    def decode(self, z):
        h = self.dec(z)  # z: [B, 1 + columns, D] (the [CLS] slot is zeros at sampling time)
        num = self.num_out(h[:, 1:1 + self.n_num]).squeeze(-1)
        cats = [head(h[:, 1 + self.n_num + i]) for i, head in enumerate(self.cat_out)]
        return num, cats


class TabSyn:
    """fit(df, budget_s) / sample(n) with the column order and dtypes of df."""

    def __init__(self, seed: int = 0, vae_epochs: int = 4000, diffusion_steps: int = 10000, batch_size: int = 4096):
        self.seed, self.vae_epochs, self.diffusion_steps, self.batch_size = seed, vae_epochs, diffusion_steps, batch_size

    def _prep(self, df):
        self.columns, self.dtypes = list(df.columns), df.dtypes
        self.num = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
        self.cat = [c for c in df.columns if c not in self.num]
        self.means = df[self.num].mean()
        n = len(df)
        self.qt = QuantileTransformer(output_distribution="normal", n_quantiles=max(min(n // 30, 1000), 10),
                                      random_state=self.seed)
        x_num = self.qt.fit_transform(df[self.num].fillna(self.means).to_numpy()) if self.num else np.zeros((n, 0))
        values = [df[c].astype(object).where(df[c].notna(), None) for c in self.cat]  # missing: its own level
        self.levels = [pd.Index(pd.unique(v)) for v in values]
        x_cat = np.stack([lv.get_indexer(v) for v, lv in zip(values, self.levels)], 1) if self.cat \
            else np.zeros((n, 0), int)
        return torch.tensor(x_num, dtype=torch.float32), torch.tensor(x_cat, dtype=torch.long)

    def fit(self, df: pd.DataFrame, budget_s: float = 900):
        t0 = time.monotonic()
        torch.manual_seed(self.seed)
        g = torch.Generator().manual_seed(self.seed)
        x_num, x_cat = self._prep(df)
        n = len(df)
        perm = torch.randperm(n, generator=g)
        n_val = max(1, n // 10)
        va, tr = perm[:n_val], perm[n_val:]
        self.vae = VAE(x_num.shape[1], [len(lv) for lv in self.levels])
        opt = torch.optim.Adam(self.vae.parameters(), lr=1e-3)
        beta, best, stall, best_state = 1e-2, math.inf, 0, None

        def loss_of(idx, beta):
            mu, logvar = self.vae.encode(x_num[idx], x_cat[idx])
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            num, cats = self.vae.decode(z)
            rec = ((num - x_num[idx]) ** 2).mean() if x_num.shape[1] else torch.zeros(())
            for i, logits in enumerate(cats):
                rec = rec + nn.functional.cross_entropy(logits, x_cat[idx, i])
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()
            return rec, rec + beta * kl

        vae_deadline = t0 + 0.6 * budget_s
        for epoch in range(self.vae_epochs):
            order = tr[torch.randperm(len(tr), generator=g)]
            self.vae.train()
            for s in range(0, len(order), self.batch_size):
                _, loss = loss_of(order[s:s + self.batch_size], beta)
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.vae.eval()
            with torch.no_grad():
                v, _ = loss_of(va, beta)
            if float(v) < best - 1e-4:
                best, stall = float(v), 0
                best_state = {k: t.clone() for k, t in self.vae.state_dict().items()}
            else:
                stall += 1
                if stall >= 10 and beta > 1e-5:
                    beta, stall = max(beta * 0.7, 1e-5), 0
            if time.monotonic() > vae_deadline:
                break
        self.vae.load_state_dict(best_state)
        self.vae_epochs_run_ = epoch + 1
        with torch.no_grad():
            mu, _ = self.vae.encode(x_num, x_cat)
        lat = mu[:, 1:].flatten(1)
        self.lat_mean = lat.mean(0)
        self.denoiser, hist = train_diffusion((lat - self.lat_mean) / 2, steps=self.diffusion_steps,
                                           deadline=t0 + 0.97 * budget_s, batch_size=self.batch_size, hidden=2048,
                                           t_dim=1024, generator=g, verbose=False)
        self.diffusion_steps_run_ = hist[-1]["step"] + 1 if hist else 0
        return self

    @torch.no_grad()
    def sample(self, n: int) -> pd.DataFrame:
        g = torch.Generator().manual_seed(self.seed + 1)
        z = sample_heun(self.denoiser, n, self.lat_mean.shape[0], generator=g) * 2 + self.lat_mean
        z = torch.cat([torch.zeros(n, 1, D_TOKEN), z.view(n, -1, D_TOKEN)], 1)
        num, cats = self.vae.decode(z)
        out = {}
        if self.num:
            x = self.qt.inverse_transform(num.numpy())
            for i, c in enumerate(self.num):
                col = x[:, i]
                out[c] = np.round(col).astype(self.dtypes[c]) if pd.api.types.is_integer_dtype(self.dtypes[c]) else col
        for c, lv, logits in zip(self.cat, self.levels, cats):
            out[c] = lv[logits.argmax(-1).numpy()].to_numpy()
        return pd.DataFrame(out)[self.columns]
