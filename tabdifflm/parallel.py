"""Training on several processes (``torchrun --nproc_per_node N``): data parallel VAE steps with torch.distributed.

Every process runs the same ``fit`` on the same table with the same seed, so all start from the same
weights and draw the same batches. The VAE (:class:`tabdifflm.model.RowVAE`, one module) is wrapped in
PyTorch's ``DistributedDataParallel``: each step splits the batch between the processes and DDP averages
the gradients during the backward pass, so every process keeps identical weights. Validation passes are
split the same way and summed; whether the time budget is spent is decided once for all processes. Gloo on
CPU, NCCL on GPU.
Only rank 0 writes files (:meth:`DiffLMSynthesizer.save`).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    """Join the process group torchrun describes, if there is one and it is not joined yet."""
    if launched() and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=timedelta(minutes=30))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This process's share of a batch of row indices (every world()-th row)."""
    return idx[rank()::world()]


def data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel when several processes run, else ``module`` itself.

    ``find_unused_parameters``: the VAE's heads-only steps leave the text encoder's backbone out of the
    graph. Buffers are not re-broadcast: every process starts identical and stays so.
    """
    if world() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    cuda = next(module.parameters()).device.type == "cuda"
    return DistributedDataParallel(module, device_ids=[torch.cuda.current_device()] if cuda else None,
                                   find_unused_parameters=True, broadcast_buffers=False)


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum of a list of numbers over the processes."""
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_gather(items: list) -> list:
    """Every process's list of picklable items, concatenated in rank order (the list itself with one process)."""
    if world() == 1:
        return list(items)
    parts = [None] * world()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def any_true(flag: bool) -> bool:
    """True on every process if it is true on any (so all stop at the same step)."""
    return bool(all_sum([float(flag)])[0] > 0) if world() > 1 else flag


def broadcast_int(value: int) -> int:
    """Rank 0's value on every process (e.g. a seed drawn from an unseeded random_state)."""
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, 0)
    return int(t.item())


def barrier() -> None:
    if world() > 1:
        dist.barrier()
