"""Distributed data parallel (DDP) training through ``torchrun``.

``torchrun --nproc_per_node N -m medclass train ...`` starts N processes with the environment
variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set
(torch.distributed's "env://" rendezvous; several machines through ``--nnodes`` and
``--rdzv-endpoint``). :func:`init_distributed` reads them and joins the process group: NCCL when
every process has a CUDA device, gloo on CPUs. Without those variables everything here is a
no-op, so a plain ``medclass train`` is a world of one.

Pieces the trainer uses:

- :class:`ShardedSampler`: one shuffled order per epoch, identical on every rank (same seed), cut
  into ``world_size`` interleaved shards, so that step ``j`` of all ranks together sees exactly the
  samples of step ``j`` of one process with the same global batch and seed.
- :func:`all_reduce_sum` / :func:`all_gather_rows`: training sums and validation logits reduced
  across ranks, so every rank computes the same metrics (and takes the same early-stopping and
  plateau decisions).
- :class:`DistributedBatchNorm2d`: synchronised batch norm for gloo (CPU), where
  ``torch.nn.SyncBatchNorm`` (CUDA only) cannot run; on CUDA :func:`convert_sync_batchnorm`
  uses ``torch.nn.SyncBatchNorm``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

__all__ = [
    "DistContext",
    "init_distributed",
    "ShardedSampler",
    "all_reduce_sum",
    "all_gather_rows",
    "barrier",
    "DistributedBatchNorm2d",
    "convert_sync_batchnorm",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its
    machine; ``device`` is the one it trains on (``cuda:<local_rank>`` with NCCL)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Optional[torch.device] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, plots and the decode cache; the others only train."""
        return self.rank == 0


def init_distributed(device_name: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment, or return a world of one.

    ``device_name`` is ``train.device``: ``auto`` and ``cuda`` use NCCL on ``cuda:LOCAL_RANK``
    when CUDA is available, ``cpu`` (or no CUDA) uses gloo on the CPU.

    Raises:
        RuntimeError: ``WORLD_SIZE`` > 1 but the rendezvous variables are incomplete, or
            ``train.device=cuda`` with fewer CUDA devices than local processes.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; start with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                "lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(seconds=timeout_s),
            **({"device_id": device} if use_cuda else {}),
        )
    return DistContext(rank, world, local_rank, device)


def barrier(ctx: DistContext) -> None:
    """Wait for all ranks (no-op in a world of one)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum a few Python numbers over all ranks (float64; e.g. loss sum, correct count, seen count)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_rows(local: Tensor, shard_index: Tensor, total: int, ctx: DistContext) -> Tensor:
    """Reassemble a tensor whose rows were computed in shards: rank ``r`` holds rows
    ``shard_index`` (``(n_r,)`` int64) of a ``(total, ...)`` result as ``local`` ``(n_r, ...)``.
    Returns the full ``(total, ...)`` tensor on every rank (on ``local``'s device)."""
    if not ctx.enabled:
        return local
    n_max = (total + ctx.world_size - 1) // ctx.world_size
    pad = torch.zeros((n_max, *local.shape[1:]), dtype=local.dtype, device=local.device)
    pad[: len(local)] = local
    idx = torch.full((n_max,), -1, dtype=torch.int64, device=local.device)
    idx[: len(shard_index)] = shard_index.to(local.device)
    rows = [torch.empty_like(pad) for _ in range(ctx.world_size)]
    idxs = [torch.empty_like(idx) for _ in range(ctx.world_size)]
    dist.all_gather(rows, pad)
    dist.all_gather(idxs, idx)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, i in zip(rows, idxs):
        keep = i >= 0
        out[i[keep]] = r[keep]
    return out


class ShardedSampler(Sampler[int]):
    """Per-epoch shuffled (or class-weighted) indices of one rank's shard.

    Every rank draws the same order from ``generator`` (seeded identically by the trainer each
    epoch): ``torch.randperm(n)`` (as ``RandomSampler``), or with ``weights`` ``n`` draws with
    replacement (as ``WeightedRandomSampler``). The order is cut to a multiple of
    ``world_size`` and rank ``r`` takes positions ``r, r + W, r + 2W, ...``; with a per-rank batch
    of ``B / W``, step ``j`` of the ranks together holds positions ``jB .. (j+1)B - 1``, the same
    samples as step ``j`` of one process with batch ``B``. (torch's ``DistributedSampler`` cuts the
    same way but draws its own permutation and cannot weight classes.)
    """

    def __init__(
        self,
        n: int,
        generator: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
        weights: Optional[Tensor] = None,
    ) -> None:
        self.n, self.generator, self.rank, self.world_size = n, generator, rank, world_size
        self.weights = weights

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=self.generator)
        else:
            order = torch.randperm(self.n, generator=self.generator)
        usable = (self.n // self.world_size) * self.world_size
        return iter(order[:usable][self.rank :: self.world_size].tolist())


class _SyncStats(torch.autograd.Function):
    """Sum per-channel statistics over ranks; the gradient is summed back (the all-reduce's
    adjoint is itself). Written as an autograd Function, as ``torch.nn.SyncBatchNorm`` does."""

    @staticmethod
    def forward(ctx, stats: Tensor, group) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = stats.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        g = grad.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch of all ranks, for gloo/CPU (``torch.nn.SyncBatchNorm``
    runs on CUDA only). Input and output ``(N, C, H, W)``.

    In training, each rank sums ``count``, ``sum(x)`` and ``sum(x**2)`` per channel, the sums are
    all-reduced (differentiably), and ``x`` is normalised by the global mean and biased variance;
    running statistics use the unbiased variance, as ``nn.BatchNorm2d`` (Ioffe & Szegedy 2015).
    Outside training, or in a world of one, it is ``nn.BatchNorm2d``. The state dict keys equal
    ``nn.BatchNorm2d``'s, so checkpoints stay interchangeable.
    """

    group = None  # process group for the statistics; set by convert_sync_batchnorm

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() / c, dtype=torch.float32, device=x.device)
        stats = torch.cat([count, xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3))])
        stats = _SyncStats.apply(stats, self.group)
        n = stats[0]
        mean = stats[1 : 1 + c] / n
        var = (stats[1 + c :] / n - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm2d`` by a synchronised one: ``torch.nn.SyncBatchNorm`` on CUDA,
    :class:`DistributedBatchNorm2d` elsewhere (weights and running statistics carried over).
    Call after ``init_distributed`` and before wrapping in DDP."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    group = dist.new_group(backend="gloo") if dist.is_initialized() else None
    DistributedBatchNorm2d.group = group

    def convert(module: nn.Module) -> nn.Module:
        if type(module) is nn.BatchNorm2d:
            new = DistributedBatchNorm2d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            for p_new, p_old in zip(new.parameters(), module.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            return new
        for name, child in module.named_children():
            setattr(module, name, convert(child))
        return module

    return convert(model)
