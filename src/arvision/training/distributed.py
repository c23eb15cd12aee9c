"""torchrun process groups and model wrapping (DDP for small models, FSDP2 ``fully_shard`` for large ones).

Launched plainly, everything degrades to a single process with no process group. Under ``torchrun`` the
backend is NCCL when CUDA is available and gloo otherwise.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

Parallel = Literal["auto", "none", "ddp", "fsdp"]


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process; ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the torchrun process group if the environment names one, else run single-process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        return DistInfo(device=device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group after a run that ended normally on every rank.

    The collection first frees FSDP2 modules still held in reference cycles: left for interpreter exit,
    their state outlived the process group and aborted one gloo rank in about 1 exit of 10 ("terminate
    called without an active exception"). The barrier keeps late ranks from aborting at exit.
    """
    if info.distributed and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def leave_after_error(info: DistInfo) -> None:
    """Leave the process group on a rank that raised, without the barrier of :func:`shutdown`: the other ranks
    may be waiting in another collective, and a barrier would hang them all until its timeout instead of
    letting this rank exit with its error (torchrun then stops the others)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce(value: float, info: DistInfo, op: dist.ReduceOp.RedOpType) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor, op=op)
    return tensor.item()


def all_ranks_agree(flag: bool, info: DistInfo) -> bool:
    """True only if ``flag`` is true on every rank."""
    return min_over_ranks(1.0 if flag else 0.0, info) > 0


def mean_over_ranks(value: float, info: DistInfo) -> float:
    """The mean of ``value`` over the ranks (``value`` itself without a process group)."""
    return _all_reduce(value, info, dist.ReduceOp.SUM) / info.world_size if info.distributed else value


def min_over_ranks(value: float, info: DistInfo) -> float:
    """The smallest ``value`` of any rank (``value`` itself without a process group)."""
    return _all_reduce(value, info, dist.ReduceOp.MIN) if info.distributed else value


def resolve_parallel(parallel: Parallel, info: DistInfo) -> Parallel:
    """The wrapping that ``parallel`` means for this layout: ``auto`` is DDP across ranks, one process is ``none``."""
    if parallel == "auto":
        return "ddp" if info.distributed else "none"
    if parallel != "none" and not info.distributed:
        return "none"
    return parallel


def wrap_model(
    model: nn.Module, parallel: Parallel, info: DistInfo, shard_units: Sequence[nn.Module] = ()
) -> nn.Module:
    """Return the module to train: ``model`` itself, a DDP wrapper, or ``model`` sharded in place by FSDP2.

    With FSDP2 each module in ``shard_units`` (e.g. transformer blocks) becomes its own shard group,
    then the root; parameters become ``DTensor`` shards.
    """
    parallel = resolve_parallel(parallel, info)
    model.to(info.device)
    if parallel == "none":
        return model
    if parallel == "ddp":
        device_ids = [info.local_rank] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for unit in shard_units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def root_params_gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Yield the unwrapped model with the FSDP2 root's own shards gathered (a collective: every rank enters).

    Needed whenever code calls sub-modules directly instead of the root's ``forward`` (sampling, for
    instance): sharded sub-units gather themselves in their own forward, the root's parameters do not.
    """
    module = unwrap(model)
    if not is_fsdp(module):
        yield module
        return
    module.unshard()
    try:
        yield module
    finally:
        module.reshard()
