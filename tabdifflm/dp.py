"""Differential privacy for ``fit``: DP-SGD on every stage that learns from the rows.

Each step draws a Poisson batch (every row in with probability q, so the batch size varies), computes one
gradient per row, clips each to ``max_grad_norm``, sums them and adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm``: the clipping, noise and averaging are Opacus's ``DPOptimizer``, the
accounting Opacus's RDP accountant. :func:`plan_noise` sets each stage's noise multiplier so that the
composition of all planned steps stays within (epsilon, delta); a fit cut short by ``max_time`` spends less,
and the ledger reports what was spent.

Per-row gradients: for the VAE, one batched decoder pass and torch.func through the small trained path
(:meth:`~tabdifflm.model.RowVAE.private_grads`), a loop over the rows (:func:`per_row_grads`) where LoRA
puts trained weights inside the decoder; ``torch.func.vmap`` for the small denoiser (:func:`vmap_grads`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def _accountant(history):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(s, q, t) for s, q, t in history if t > 0]
    return acc


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of the composed subsampled Gaussian mechanisms ``(noise, sample_rate, steps)``."""
    import warnings

    if not any(t > 0 for *_, t in history):
        return 0.0
    with warnings.catch_warnings():  # "optimal order is the smallest alpha": a looser bound, still valid
        warnings.simplefilter("ignore", UserWarning)
        return float(_accountant(history).get_epsilon(delta))


def plan_noise(epsilon: float, delta: float, stages: dict[str, tuple[float, int]], tol: float = 0.01) -> dict:
    """Noise multipliers for the stages ``{name: (sample_rate, steps)}`` whose composition spends at most
    ``epsilon`` at ``delta``: each stage's own multiplier for the whole budget, all scaled by the one factor
    that makes the composition fit (bisection on the RDP accountant). So no stage's many steps drown the
    others in noise: each stage is as hard to attack as the others."""
    def smallest(spent_at, hi=1.0):
        lo = 0.0
        while spent_at(hi) > epsilon:
            lo, hi = hi, hi * 2
            if hi > 1e4:
                raise ValueError(f"dp_epsilon={epsilon} cannot be reached with {sum(t for _, t in stages.values())}"
                                 " steps (noise multiplier above 10,000): raise dp_epsilon or train fewer epochs")
        while hi - lo > tol * hi:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if spent_at(mid) > epsilon else (lo, mid)
        return hi

    alone = {k: smallest(lambda s, q=q, t=t: epsilon_of([(s, q, t)], delta)) for k, (q, t) in stages.items()}
    k = smallest(lambda f: epsilon_of([(f * alone[n], q, t) for n, (q, t) in stages.items()], delta))
    return {n: k * s for n, s in alone.items()}


@dataclass
class PrivacyLedger:
    """The fit's DP settings and every step taken: what ``privacy_report_`` states."""

    epsilon: float
    delta: float
    max_grad_norm: float
    noise: dict = field(default_factory=dict)  # stage -> noise multiplier
    planned: dict = field(default_factory=dict)  # stage -> (sample_rate, steps) the noise was set for
    taken: dict = field(default_factory=dict)  # stage -> [sample_rate, steps taken]

    def plan(self, stages: dict[str, tuple[float, int]]) -> dict:
        self.planned = dict(stages)
        self.noise = plan_noise(self.epsilon, self.delta, stages)
        self.taken = {k: [q, 0] for k, (q, _) in stages.items()}
        return self.noise

    def spent(self) -> float:
        return epsilon_of([(self.noise[k], q, t) for k, (q, t) in self.taken.items()], self.delta)

    def report(self) -> dict:
        return {"epsilon": round(self.spent(), 4), "delta": self.delta, "target_epsilon": self.epsilon,
                "max_grad_norm": self.max_grad_norm,
                "stages": {k: {"noise_multiplier": round(self.noise[k], 4), "sample_rate": round(q, 6),
                               "steps": t, "planned_steps": self.planned[k][1]}
                           for k, (q, t) in self.taken.items()}}


class DPSGD:
    """One stage's DP-SGD: Poisson batches of ``pool`` and private steps of ``optimizer`` (wrapped in Opacus's
    DPOptimizer), each step counted in the ledger under ``stage``."""

    def __init__(self, optimizer, ledger: PrivacyLedger, stage: str, n_rows: int, generator: torch.Generator):
        from opacus.optimizers import DPOptimizer

        self.ledger, self.stage, self.generator = ledger, stage, generator
        self.rate = ledger.taken[stage][0]
        self.opt = DPOptimizer(optimizer, noise_multiplier=ledger.noise[stage],
                               max_grad_norm=ledger.max_grad_norm,
                               expected_batch_size=max(1, round(self.rate * n_rows)), generator=generator)
        self.params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]

    def batch(self, pool: torch.Tensor) -> torch.Tensor:
        """Poisson sampling: each row of ``pool`` [N] is in with probability ``rate`` -> [B] (B varies, may be 0)."""
        return pool[torch.rand(len(pool), generator=self.generator) < self.rate]

    def step(self, grad_samples: list[torch.Tensor]) -> None:
        """Clip the per-row gradients (one [B, *p.shape] tensor per parameter), add noise, update."""
        for p, g in zip(self.params, grad_samples):
            p.grad_sample = g
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ledger.taken[self.stage][1] += 1


def per_row_grads(loss_of, rows: list, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """One gradient per row: ``loss_of([row])`` backpropagated row by row -> [len(rows), *p.shape] per parameter."""
    out = [torch.zeros(len(rows), *p.shape, device=p.device, dtype=p.dtype) for p in params]
    for i, r in enumerate(rows):
        grads = torch.autograd.grad(loss_of([r]), params, allow_unused=True)
        for o, g in zip(out, grads):
            if g is not None:
                o[i] = g
    return out


def vmap_grads(net: torch.nn.Module, loss_one, *batch: torch.Tensor) -> list[torch.Tensor]:
    """Per-row gradients of ``loss_one(net_output_fn, *row)`` for a small pure-PyTorch ``net`` with
    torch.func (one vectorised pass) -> [B, *p.shape] per parameter, in ``net.parameters()`` order."""
    from torch.func import functional_call, grad, vmap

    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}

    def one(ps, *row):
        return loss_one(lambda *a: functional_call(net, ps, a), *(x.unsqueeze(0) for x in row))

    if len(batch[0]) == 0:
        return [torch.zeros(0, *params[n].shape, device=params[n].device) for n in names]
    g = vmap(grad(one), in_dims=(None, *[0] * len(batch)), randomness="different")(params, *batch)
    return [g[n] for n in names]


def default_delta(n_rows: int) -> float:
    """delta when the user gives none: 1 / (10 n), well below the 1 / n at which releasing a row is allowed."""
    return 1.0 / (10 * n_rows)

