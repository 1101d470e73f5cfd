"""Training loops: the VAE (encoder + injector against the frozen decoder) and the latent diffusion model."""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import parallel
from .diffusion import MLPDenoiser, edm_loss, edm_noise, edm_terms
from .model import RowVAE, VAEOutput, choice_nll
from .model import column_balanced_mean  # noqa: F401  (re-exported)


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


def mu_dev(module) -> torch.device:
    return next(module.parameters()).device


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


def evaluate_nll(vae: RowVAE, data: VAEData, idx, batch_size):
    """Mean reconstruction NLL per row (nats) over rows ``idx``, using the posterior means. Under torchrun
    each process scores its share of the rows and the mean is over all of them."""
    idx = parallel.shard(torch.as_tensor(idx)).tolist()
    vae.eval()
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            *batch, valid = data.batch(idx[s:s + batch_size])
            eps = torch.zeros(len(valid), vae.encoder.head.out_features // 2)  # z = mu
            total += float(vae(*batch, valid, eps).nll.sum())
    vae.train()
    total, n = parallel.all_sum([total, len(idx)])
    return total / max(n, 1)


def train_vae(vae: RowVAE, data: VAEData, train_idx, val_idx, *, max_epochs, deadline,
              batch_size, learning_rate, encoder_learning_rate, max_beta, min_beta, beta_decay=0.7,
              beta_patience=2, eval_every=25, aux_steps=0, aux_stop_gap=None, probe_idx=None,
              memorisation_gap=None, latent_dropout=0.0, reserve_rows=0, reserve_margin=1.5,
              hold_back=None, dp=None, generator=None, verbose=True, log=None):
    """Train the VAE's encoder, injector and latent logit head against its frozen decoder (:class:`RowVAE`
    computes the loss: CE + aux_weight x head CE + beta x KL).

    ``aux_steps`` heads-only steps (the latent head's CE + beta x KL) follow every decoder step, training
    the encoder head and the latent head on the backbone's forward pass only: they cost no decoder pass
    and no backbone backward, so the latent learns to carry every column many times faster than through
    the frozen LLM alone. Under torchrun the module is wrapped in PyTorch's DistributedDataParallel: each
    process takes its share of every batch and the gradients are averaged.

    Beta starts at ``max_beta`` and is multiplied by ``beta_decay`` whenever the validation NLL has not
    improved for ``beta_patience`` evaluations, down to ``min_beta``. The best state on validation NLL is
    restored at the end. Stops at ``max_epochs`` or when the final validation pass would end after
    ``deadline`` (time.monotonic()): the passes are timed, so the stage ends by its deadline.
    ``reserve_rows``: rows that a later stage passes through the decoder (the read-out's stage), whose time
    is held back from ``deadline`` at ``reserve_margin`` times this stage's slowest validation pass per row;
    it follows the machine as the stage runs, where a fixed share of the budget would not.
    ``hold_back``: a function giving further seconds to hold back from ``deadline`` (the prior's stage),
    called before every evaluation but the final one, so a timing made as the stage runs replaces one made
    before it (a process's first steps run slower); its latest value is in each record (``held_s``).

    Memorisation: with ``probe_idx`` (some training rows) each evaluation also scores those rows the same
    way; the gap (val NLL - probe NLL) / val NLL is how much better the model knows rows it was trained on
    than rows it never saw (about 0 for a model that has learnt the table, not its rows). With
    ``memorisation_gap`` set, a checkpoint whose gap is above it is never kept, and the stage stops after
    two such evaluations in a row. With ``aux_stop_gap`` the heads-only steps end for good once a gap is
    above it (they pass over the training rows ``aux_steps`` times faster than the decoder steps, and so
    learn them by heart first); that evaluation's record says so (``aux_stopped``).

    ``latent_dropout``: the share of each batch's rows scored without the latent's logits (the decoder and
    the latent head's read-out of it alone), so they learn to write a row that holds together from the
    columns already written (:class:`~tabdifflm.model.LatentLogitHead`). Their NLL counts in the training
    NLL of ``history``; validation and probe rows are always scored with the latent.

    Differential privacy: with ``dp`` (a :class:`~tabdifflm.dp.PrivacyLedger` whose stage "vae" is planned)
    every step, decoder and heads-only alike, is a DP-SGD step on a Poisson batch of the training rows (the
    text encoder's backbone must be frozen by the caller); there is no validation slice to choose a
    checkpoint or lower beta with, so beta stays ``max_beta`` and the last state is kept.

    Returns (history, why it stopped): history is a list of dicts (elapsed s, step, epoch, beta, train and
    validation NLL per row, and with ``probe_idx`` the probe's NLL and the gap); the reason is one of
    "max_epochs", "time budget", "memorisation".
    """
    encoder = vae.encoder
    backbone = {id(p) for p in encoder.backbone.parameters()}
    params = [
        {"params": encoder.backbone.parameters(), "lr": encoder_learning_rate},
        {"params": [p for p in vae.parameters() if id(p) not in backbone], "lr": learning_rate},
    ]
    trainable = [p for p in vae.parameters() if p.requires_grad]
    net = parallel.data_parallel(vae)  # the module itself with one process
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    private = private_heads = None
    if dp is not None:  # heads-only steps get their own optimiser: noise only on the parameters they train
        from .dp import DPSGD

        def dpsgd(ps):
            opt = torch.optim.AdamW(ps, lr=learning_rate, weight_decay=0.0)
            return DPSGD(opt, dp, "vae", len(train_idx), generator)

        private = dpsgd([p for p in vae.parameters() if p.requires_grad and id(p) not in backbone])
        heads = [*vae.encoder.head.parameters(), *(vae.rows.latent_head.parameters() if vae.rows.latent_head else [])]
        private_heads = dpsgd([p for p in heads if p.requires_grad])
    beta, best, stall, over = max_beta, math.inf, 0, 0
    best_state = None
    reason = "max_epochs"
    history = []
    t0 = time.monotonic()
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    total_steps = steps_per_epoch * max_epochs
    train_idx = torch.as_tensor(train_idx)
    step, running = 0, []
    latent_dim = encoder.head.out_features // 2
    vae.train()
    bar = tqdm(total=total_steps, desc="VAE", disable=not verbose or not parallel.is_main(), dynamic_ncols=True)
    n_aux = aux_steps if vae.aux_weight else 0

    def run(part, heads_only=False):
        """One optimiser step on the rows ``part`` (this process's share of them). Returns the output."""
        # noise drawn for the whole batch, then this process's share: every process's generator stays in step
        if private is not None:
            return run_private(heads_only)
        eps = parallel.shard(torch.randn(len(part), latent_dim, generator=generator))
        keep = None  # latent dropout: drawn only when asked, so fits without it keep their random stream
        if latent_dropout and not heads_only:
            keep = parallel.shard((torch.rand(len(part), generator=generator) >= latent_dropout).float())
        out = net(*data.batch(parallel.shard(part).tolist()), eps, beta, heads_only, keep)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        return out

    def run_private(heads_only):
        """One DP-SGD step on a Poisson batch of the training rows (its own draw, not the epoch's order)."""
        from .dp import per_row_grads

        opt = private_heads if heads_only else private
        part = opt.batch(train_idx).tolist()
        eps = torch.randn(len(part), latent_dim, generator=generator)
        if not part:
            grads, nll = [torch.zeros(0, *p.shape, device=p.device) for p in opt.params], torch.zeros(0)
        elif vae.rows.adapter is None:  # one batched decoder pass (the adapter's weights sit inside the decoder)
            grads, nll = vae.private_grads(*data.batch(part), eps, beta, heads_only, opt.params)
        else:  # LoRA: row by row
            at = {r: i for i, r in enumerate(part)}
            nll = torch.zeros(len(part))

            def loss_of(rows):
                out = vae(*data.batch(rows), eps[at[rows[0]]][None], beta, heads_only)
                nll[at[rows[0]]] = float(out.nll.detach())
                return out.loss

            grads = per_row_grads(loss_of, part, opt.params)
        opt.step(grads)
        return VAEOutput(None, nll, None)

    eval_s = step_s = row_s = 0.0  # longest validation pass, latest training step, slowest validation row
    held_after = 0.0  # what hold_back() last gave

    def evaluate(epoch):
        """Score the validation (and probe) rows; True when the stage should stop for memorisation."""
        nonlocal best, stall, beta, best_state, eval_s, row_s, over, n_aux
        if not len(val_idx):  # under DP: no held-out rows, the training NLL is all there is to record
            history.append({"elapsed_s": round(time.monotonic() - t0, 2), "step": step, "epoch": epoch,
                            "beta": beta, "train_nll": round(sum(running) / max(len(running), 1), 3)})
            running.clear()
            return False
        t_eval = time.monotonic()
        v = evaluate_nll(vae, data, val_idx.tolist(), batch_size)
        val_s = time.monotonic() - t_eval
        row_s = max(row_s, val_s / len(val_idx))
        rec = {"elapsed_s": round(time.monotonic() - t0, 2), "step": step, "epoch": epoch, "beta": beta,
               "train_nll": round(sum(running) / max(len(running), 1), 3), "val_nll": round(v, 3),
               "val_s": round(val_s, 2)}
        if hold_back is not None:
            rec["held_s"] = round(held_after, 1)
        memorising = False
        if probe_idx is not None:
            p = evaluate_nll(vae, data, list(probe_idx), batch_size)
            gap = (v - p) / v if v > 0 else 0.0
            rec.update(probe_nll=round(p, 3), memorisation_gap=round(gap, 4))
            memorising = memorisation_gap is not None and gap > memorisation_gap
            over = over + 1 if memorising else 0
            if n_aux and aux_stop_gap is not None and gap > aux_stop_gap:
                n_aux = 0
                rec["aux_stopped"] = True
        running.clear()
        history.append(rec)
        if log:
            log(rec)
        if v < best - 1e-3 and not memorising:
            best, stall = v, 0
            best_state = copy.deepcopy(vae.state_dict())
        else:
            stall += 1
            if stall >= beta_patience and beta > min_beta:
                beta, stall = max(beta * beta_decay, min_beta), 0
        bar.set_postfix(val_nll=f"{v:.1f}", beta=f"{beta:.2g}")
        eval_s = max(eval_s, time.monotonic() - t_eval)
        return over >= 2  # the same on every process: the NLLs are summed over all of them

    def out_of_time():  # would one more step, the final validation pass and the held-back rows pass the deadline?
        held = reserve_margin * reserve_rows * row_s + held_after
        return parallel.any_true(time.monotonic() + step_s + eval_s + held > deadline)  # all processes agree

    def time_again():  # before an evaluation that decides whether the stage goes on (not the final one)
        nonlocal held_after
        if hold_back is not None:
            held_after = float(hold_back())

    time_again()
    evaluate(0)
    stop = False
    for epoch in range(max_epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for s in range(0, len(order), batch_size):
            t_step = time.monotonic()
            part = order[s:s + batch_size]
            if len(part) < parallel.world():  # a tail too short to give every process a row
                continue
            out = run(part)
            for _ in range(n_aux):
                if out_of_time():
                    break
                run(train_idx[torch.randint(0, len(train_idx), (batch_size,), generator=generator)], heads_only=True)
            step += 1
            step_s = time.monotonic() - t_step  # the latest step: follows the machine's current load
            if len(out.nll):  # a Poisson batch (DP) can be empty
                running.append(float(out.nll.detach().mean()))
                bar.set_description(f"VAE nll/row {running[-1]:.1f}")
            bar.update(1)
            if step % eval_every == 0:
                time_again()
                if evaluate(epoch):
                    reason, stop = "memorisation", True
                    break
            if out_of_time():
                reason, stop = "time budget", True
                break
        if stop:
            break
    if not history or history[-1]["step"] != step:
        evaluate(epoch if max_epochs else 0)  # its checkpoint is kept only if it passes the same checks
    bar.close()
    if best_state is not None:
        vae.load_state_dict(best_state)
    vae.eval()
    return history, reason


def time_diffusion_step(dim: int, n: int, batch_size: int = 512, hidden: int = 1024, t_dim: int = 256,
                        trials: int = 10, private: bool = False) -> float:
    """Seconds one denoiser training step takes here (timed on random latents, global RNG untouched), so
    a time budget can reserve what the diffusion stage needs before the VAE spends it: the median of
    ``trials`` steps after three to warm up (the first steps run slower, and one slow step moved a mean of
    five by half). ``private``: a DP-SGD step (per-row gradients of the batch, their norms), many times a
    plain step's cost."""
    from .dp import vmap_grads

    with torch.random.fork_rng(devices=[]):
        net = MLPDenoiser(dim, hidden=hidden, t_dim=t_dim)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x = torch.randn(max(1, min(batch_size, n)), dim)

        def step():
            opt.zero_grad()
            if private:
                grads = vmap_grads(net, lambda f, *row: edm_terms(f, *row).mean(), x, *edm_noise(x))
                for p, g in zip(net.parameters(), grads):  # what clipping reads and writes
                    p.grad = torch.einsum("i,i...", g.flatten(1).norm(dim=1), g)
            else:
                edm_loss(net, x).backward()
            opt.step()

        for _ in range(1 if private else 3):  # warm-up
            step()
        times = []
        for _ in range(trials):
            t = time.monotonic()
            step()
            times.append(time.monotonic() - t)
    return float(np.median(times))


def train_diffusion(latents: torch.Tensor, *, steps: int, deadline: float, batch_size: int = 512, lr: float = 1e-3,
                    hidden: int = 1024, t_dim: int = 256, dp=None, generator=None, verbose=True, device="cpu"):
    """Fit the EDM denoiser on normalised latents [N, D] on ``device``. Returns (denoiser, loss history).

    With ``dp`` (a :class:`~tabdifflm.dp.PrivacyLedger` whose stage "diffusion" is planned) every step is a
    DP-SGD step on a Poisson batch, its per-row gradients computed in one vectorised pass.
    """
    # initialised from the stage's own generator, not torch's global stream (which dropout has consumed
    # by then, differently in each process under torchrun)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        net = MLPDenoiser(latents.shape[1], hidden=hidden, t_dim=t_dim).to(device)
    latents = latents.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
    private = None
    if dp is not None:
        from .dp import DPSGD, vmap_grads

        private = DPSGD(opt, dp, "diffusion", latents.shape[0], generator)
        pool = torch.arange(latents.shape[0])
    history = []
    bar = tqdm(range(steps), desc="diffusion", disable=not verbose or not parallel.is_main(), dynamic_ncols=True)
    ema = None
    for step in bar:
        if private is not None:
            x = latents[private.batch(pool).to(device)]
            sigma, noise = edm_noise(x, generator)
            private.step(vmap_grads(net, lambda f, *row: edm_terms(f, *row).mean(), x, sigma, noise))
            with torch.no_grad():
                loss = edm_terms(net, x, sigma, noise).mean() if len(x) else torch.tensor(0.0)
        else:
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


@torch.no_grad()
def _choice_views(model, data: VAEData, idx: list, z: torch.Tensor, deadline: float, bar, batch_size: int = 64):
    """Teacher-forced passes of rows idx under latents z [len(idx), D] (until ``deadline``): the decoder's
    hidden state before each choice [M, H], the logits without the read-out [M, K] and the token written [M]."""
    hs, logits, targets = [], [], []
    for s in range(0, len(idx), batch_size):
        if time.monotonic() > deadline:
            break
        *_, toks, states, valid = data.batch(idx[s:s + batch_size])
        h, lg, target, _, _ = model.choice_view(model.latent_inputs(z[s:s + batch_size].to(model.device)),
                                                toks, states, valid, read=False)
        hs.append(h.float().cpu())
        logits.append(lg.cpu())
        targets.append(target.cpu())
        bar.update(len(toks))
    if not hs:
        return None
    return torch.cat(hs), torch.cat(logits), torch.cat(targets)


def train_readout(model, data: VAEData, train_idx: list, train_z: list, val_idx: list, val_z: torch.Tensor, *,
                  deadline: float, max_epochs: int = 60, patience: int = 5, batch_size: int = 1024, lr: float = 1e-3,
                  generator=None, verbose: bool = False):
    """Train the latent head's read-out of the decoder's hidden state (``model.latent_head.reader``) to write
    training rows from the latents the sampler gives near them, everything else frozen.

    The VAE reconstructs a row from its own latent, which says every column; the sampler returns blends of
    nearby latents, from which the latent head alone writes each column of another neighbour. Here the
    read-out learns, from the row written so far, what the blend leaves open (a wife is female).
    ``train_z``: one or more draws of such latents [len(train_idx), D] for the training rows, ``val_z``
    [len(val_idx), D] for the validation rows, on which the mean NLL per choice picks the best epoch.
    The decoder runs once per row and draw; the epochs then cost little. Training starts from the better,
    on the validation rows, of the read-out as the VAE stage left it and no read-out. Returns (history, why
    stopped); history[0] is that start (``val_nll``) with both candidates' validation NLL per choice; the
    read-out returned is the epoch with the lowest ``val_nll``, epoch 0 included; ``rows_s`` there is what the
    decoder's passes over the rows took.
    """
    reader = model.latent_head.reader
    t0 = time.monotonic()
    total = len(train_idx) * len(train_z) + len(val_idx)
    with tqdm(total=total, desc="read-out: rows", disable=not verbose or not parallel.is_main(),
              dynamic_ncols=True) as bar:
        val = _choice_views(model, data, val_idx, val_z, deadline, bar)
        parts = [_choice_views(model, data, train_idx, z, deadline, bar) for z in train_z]
    parts = [p for p in parts if p is not None]
    if val is None or not parts:
        return [], "time budget"
    rows_s = time.monotonic() - t0  # the decoder's passes, against which the VAE stage held time back
    h, base, target = (torch.cat(t) for t in zip(*parts))
    dev = next(reader.parameters()).device

    def mean_nll(rd, hh, bb, tt):  # hidden [M, H], logits without the read-out [M, K], tokens [M] -> scalar
        return choice_nll(bb.to(dev) + rd(hh.to(dev)), tt.to(dev)).mean()

    with torch.no_grad():
        kept = float(mean_nll(reader, *val))  # the read-out as the VAE stage left it
        without = float(choice_nll(val[1], val[2]).mean())
    if without < kept:  # that read-out hurts the blends: start from none (a zero last layer adds nothing)
        for p in reader[-1].parameters():
            torch.nn.init.zeros_(p)
    start = min(kept, without)
    history = [{"epoch": 0, "val_nll": round(start, 4), "val_nll_vae_readout": round(kept, 4),
                "val_nll_without": round(without, 4), "choices": len(target), "rows_s": round(rows_s, 3)}]
    best, best_state, bad, why = start, copy.deepcopy(reader.state_dict()), 0, "epochs"
    opt = torch.optim.Adam(reader.parameters(), lr=lr)
    bar = tqdm(range(1, max_epochs + 1), desc="read-out", disable=not verbose or not parallel.is_main(),
               dynamic_ncols=True)
    for epoch in bar:
        order, seen = torch.randperm(len(target), generator=generator), 0.0
        for s in range(0, len(order), batch_size):
            i = order[s:s + batch_size]
            loss = mean_nll(reader, h[i], base[i], target[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += float(loss.detach()) * len(i)
        with torch.no_grad():
            v = float(mean_nll(reader, *val))
        history.append({"epoch": epoch, "train_nll": round(seen / len(order), 4), "val_nll": round(v, 4)})
        bar.set_postfix(val_nll=f"{v:.3f}")
        if v < best - 1e-4:
            best, best_state, bad = v, copy.deepcopy(reader.state_dict()), 0
        else:
            bad += 1
        if bad >= patience:
            why = "validation"
            break
        if time.monotonic() > deadline:
            why = "time budget"
            break
    # the best epoch, or the start (epoch 0) if none beats it
    reader.load_state_dict(best_state)
    return history, why
