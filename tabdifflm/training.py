"""Training loops: the VAE (encoder + injector against the frozen decoder) and the latent diffusion model."""
from __future__ import annotations

import copy
import math
import time

import torch
from tqdm.auto import tqdm

from . import parallel
from .diffusion import MLPDenoiser, edm_loss


def pad_batch(seqs: list[list[int]], states: list[list[int]], done_state: int):
    """Right-pad token and state lists -> tokens [B, L], states [B, L], valid [B, L]."""
    L = max(len(s) for s in seqs)
    B = len(seqs)
    toks = torch.zeros(B, L, dtype=torch.long)
    sts = torch.full((B, L), done_state, dtype=torch.long)
    valid = torch.zeros(B, L, dtype=torch.bool)
    for b, (s, st) in enumerate(zip(seqs, states)):
        toks[b, :len(s)] = torch.tensor(s)
        sts[b, :len(st)] = torch.tensor(st)
        valid[b, :len(s)] = True
    return toks, sts, valid


def reconstruction_nll(model, z, toks, states, valid):
    """Per-row NLL (nats, summed over the row's choices) [B] and the number of choice tokens."""
    nll, rows, _ = model(z, toks, states, valid)
    return torch.zeros(z.shape[0], device=nll.device).index_add(0, rows, nll), len(nll)


def column_balanced_mean(nll, rows, cols, n_rows: int, n_cols: int) -> torch.Tensor:
    """Mean over (row, column) cells of the cell's mean token NLL: a one-token class weighs as much as a
    seven-digit number, where a token mean would weigh the number seven times more."""
    cell = rows * n_cols + cols
    tot = torch.zeros(n_rows * n_cols, device=nll.device).index_add(0, cell, nll)
    cnt = torch.zeros(n_rows * n_cols, device=nll.device).index_add(0, cell, torch.ones_like(nll))
    keep = cnt > 0
    return (tot[keep] / cnt[keep]).mean()


def mu_dev(module) -> torch.device:
    return next(module.parameters()).device


def kl_term(mu, logvar):
    """DiffLM's KL: 0.5 * mean(mu^2 + exp(logvar) - logvar - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).mean()


class VAEData:
    """Pre-tokenised rows: encoder inputs and decoder tokens/states, indexable by row."""

    def __init__(self, enc_tok, enc_texts, dec_tokens, dec_states, done_state, max_length=256, features=None):
        self.enc = enc_tok(enc_texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        self.features = features  # [n, F] exact row features for the encoder head, or None
        self.dec_tokens = dec_tokens
        self.dec_states = dec_states
        self.done = done_state

    def __len__(self):
        return len(self.dec_tokens)

    def batch(self, idx):
        idx = list(idx)
        ids = self.enc["input_ids"][idx]
        am = self.enc["attention_mask"][idx]
        keep = int(am.sum(1).max())
        toks, sts, valid = pad_batch([self.dec_tokens[i] for i in idx], [self.dec_states[i] for i in idx], self.done)
        feats = None if self.features is None else self.features[idx]
        return ids[:, :keep], am[:, :keep], feats, toks, sts, valid


def evaluate_nll(encoder, model, data: VAEData, idx, batch_size):
    """Mean reconstruction NLL per row (nats) over rows ``idx``, using the posterior means. Under torchrun
    each process scores its share of the rows and the mean is over all of them."""
    idx = parallel.shard(torch.as_tensor(idx)).tolist()
    encoder.eval()
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            ids, am, feats, toks, sts, valid = data.batch(idx[s:s + batch_size])
            mu, _ = encoder(ids.to(mu_dev(encoder)), am.to(mu_dev(encoder)), feats)
            nll, _ = reconstruction_nll(model, mu, toks, sts, valid)
            total += float(nll.sum())
    encoder.train()
    total, n = parallel.all_sum([total, len(idx)])
    return total / max(n, 1)


def train_vae(encoder, model, data: VAEData, train_idx, val_idx, *, max_epochs, deadline,
              batch_size, learning_rate, encoder_learning_rate, max_beta, min_beta, beta_decay=0.7,
              beta_patience=2, eval_every=25, column_loss="token", aux_weight=0.0,
              aux_steps=0, generator=None, verbose=True, log=None):
    """Train the encoder and the model's injector (+ latent logit head) against its frozen decoder: CE + beta * KL.

    ``column_loss="token"`` averages the CE over choice tokens (the paper); ``"column"`` over (row,
    column) cells (:func:`column_balanced_mean`), so every column counts the same.
    ``aux_weight`` adds the latent head's own CE (:meth:`RowModel.head_nll`, same averaging), and ``aux_steps``
    steps on that loss (+ beta * KL) follow every decoder step, training the encoder head and the latent
    head on the backbone's forward pass only: they cost no decoder pass and no backbone backward, so the
    latent learns to carry every column many times faster than through the frozen LLM alone.

    Beta starts at ``max_beta`` and is multiplied by ``beta_decay`` whenever the validation NLL has not
    improved for ``beta_patience`` evaluations, down to ``min_beta``. The best state on validation NLL is
    restored at the end. Stops at ``max_epochs`` or when the final validation pass would end after
    ``deadline`` (time.monotonic()): the passes are timed, so the stage ends by its deadline.
    Returns a list of dicts (elapsed s, step, epoch, beta, train and validation NLL per row).
    """
    latent_head = model.latent_head
    heads = list(encoder.head.parameters()) + list(model.parameters())
    params = [
        {"params": encoder.backbone.parameters(), "lr": encoder_learning_rate},
        {"params": heads, "lr": learning_rate},
    ]
    modules = [encoder, model]
    trainable = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    beta, best, stall = max_beta, math.inf, 0
    best_state = None
    history = []
    t0 = time.monotonic()
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    total_steps = steps_per_epoch * max_epochs
    train_idx = torch.as_tensor(train_idx)
    step, running = 0, []
    dev = mu_dev(encoder)
    encoder.train()
    bar = tqdm(total=total_steps, desc="VAE", disable=not verbose or not parallel.is_main(), dynamic_ncols=True)
    n_cols = model.grammar.n_columns

    def average(nll, rows, cols, n_rows):
        return column_balanced_mean(nll, rows, cols, n_rows, n_cols) if column_loss == "column" else nll.mean()

    def aux_term(z, toks, sts, valid):
        if not aux_weight or latent_head is None:
            return 0.0
        return aux_weight * average(*model.head_nll(z, toks, sts, valid), len(toks))

    def encode_sample(n_global, ids, am, feats, backbone_grad=True):
        # noise drawn for the whole batch, then this process's share: every process's generator stays in step
        eps = parallel.shard(torch.randn(n_global, encoder.head.out_features // 2, generator=generator)).to(dev)
        if backbone_grad:
            mu, logvar = encoder(ids.to(dev), am.to(dev), feats)
        else:  # auxiliary steps train the heads only: the backbone's forward pass alone is a third of the cost
            with torch.no_grad():
                pooled = encoder.pooled(ids.to(dev), am.to(dev), feats)
            mu, logvar = encoder.head_forward(pooled)
        return mu, logvar, mu + eps * (0.5 * logvar).exp()

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        parallel.average_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()

    eval_s = step_s = 0.0  # longest validation pass, latest training step

    def evaluate(epoch):
        nonlocal best, stall, beta, best_state, eval_s
        t_eval = time.monotonic()
        v = evaluate_nll(encoder, model, data, val_idx.tolist(), batch_size)
        rec = {"elapsed_s": round(time.monotonic() - t0, 2), "step": step, "epoch": epoch, "beta": beta,
               "train_nll": round(sum(running) / max(len(running), 1), 3), "val_nll": round(v, 3)}
        running.clear()
        history.append(rec)
        if log:
            log(rec)
        if v < best - 1e-3:
            best, stall = v, 0
            best_state = [copy.deepcopy(m.state_dict()) for m in modules]
        else:
            stall += 1
            if stall >= beta_patience and beta > min_beta:
                beta, stall = max(beta * beta_decay, min_beta), 0
        bar.set_postfix(val_nll=f"{v:.1f}", beta=f"{beta:.2g}")
        eval_s = max(eval_s, time.monotonic() - t_eval)

    def out_of_time():  # would one more step and the final validation pass end after the deadline?
        return parallel.any_true(time.monotonic() + step_s + eval_s > deadline)  # all processes agree

    evaluate(0)
    stop = False
    for epoch in range(max_epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for s in range(0, len(order), batch_size):
            t_step = time.monotonic()
            part = order[s:s + batch_size]
            if len(part) < parallel.world():  # a tail too short to give every process a row
                continue
            ids, am, feats, toks, sts, valid = data.batch(parallel.shard(part).tolist())
            mu, logvar, z = encode_sample(len(part), ids, am, feats)
            nll, rows, cols = model(z, toks, sts, valid)
            update(average(nll, rows, cols, len(toks)) + aux_term(z, toks, sts, valid) + beta * kl_term(mu, logvar))
            for _ in range(aux_steps if aux_weight and latent_head is not None else 0):
                if out_of_time():
                    break
                pick = train_idx[torch.randint(0, len(train_idx), (batch_size,), generator=generator)]
                ids, am, feats, toks, sts, valid = data.batch(parallel.shard(pick).tolist())
                mu, logvar, z = encode_sample(len(pick), ids, am, feats, backbone_grad=False)
                update(aux_term(z, toks, sts, valid) + beta * kl_term(mu, logvar))
            step += 1
            step_s = time.monotonic() - t_step  # the latest step: follows the machine's current load
            running.append(float(nll.detach().sum()) / len(toks))
            bar.update(1)
            bar.set_description(f"VAE nll/row {running[-1]:.1f}")
            if step % eval_every == 0:
                evaluate(epoch)
            if out_of_time():
                stop = True
                break
        if stop:
            break
    if not history or history[-1]["step"] != step:
        evaluate(epoch if max_epochs else 0)
    bar.close()
    if best_state is not None:
        for m, st in zip(modules, best_state):
            m.load_state_dict(st)
    encoder.eval()
    return history


def time_diffusion_step(dim: int, n: int, batch_size: int = 512, hidden: int = 1024, t_dim: int = 256,
                        trials: int = 5) -> float:
    """Seconds one denoiser training step takes here (timed on random latents, global RNG untouched), so
    a time budget can reserve what the diffusion stage needs before the VAE spends it."""
    with torch.random.fork_rng(devices=[]):
        net = MLPDenoiser(dim, hidden=hidden, t_dim=t_dim)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x = torch.randn(min(batch_size, n), dim)
        edm_loss(net, x).backward()  # warm-up
        t = time.monotonic()
        for _ in range(trials):
            opt.zero_grad()
            edm_loss(net, x).backward()
            opt.step()
    return (time.monotonic() - t) / trials


def train_diffusion(latents: torch.Tensor, *, steps: int, deadline: float, batch_size: int = 512, lr: float = 1e-3,
                    hidden: int = 1024, t_dim: int = 256, generator=None, verbose=True, device="cpu"):
    """Fit the EDM denoiser on normalised latents [N, D] on ``device``. Returns (denoiser, loss history)."""
    # initialised from the stage's own generator, not torch's global stream (which dropout has consumed
    # by then, differently in each process under torchrun)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        net = MLPDenoiser(latents.shape[1], hidden=hidden, t_dim=t_dim).to(device)
    latents = latents.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
    history = []
    bar = tqdm(range(steps), desc="diffusion", disable=not verbose or not parallel.is_main(), dynamic_ncols=True)
    ema = None
    for step in bar:
        idx = torch.randint(0, latents.shape[0], (min(batch_size, latents.shape[0]),), generator=generator)
        loss = edm_loss(net, latents[idx.to(device)], generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_v = float(loss.detach())
        ema = loss_v if ema is None else 0.98 * ema + 0.02 * loss_v
        if step % 50 == 0:
            history.append({"step": step, "loss": round(ema, 4)})
            bar.set_postfix(loss=f"{ema:.3f}")
        if time.monotonic() > deadline:
            break
    if history and history[-1]["step"] != step:  # the last entry tells how many steps ran
        history.append({"step": step, "loss": round(ema, 4)})
    net.eval()
    return net, history
