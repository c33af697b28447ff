"""Data-parallel training through PyTorch's own launcher (`torchrun`).

Every rank holds a full replica and takes an equal, contiguous shard of each global batch.
Instead of wrapping the model in DistributedDataParallel (whose single backward per step does
not fit alternating methods that step twice per batch and take extra head-only gradients),
gradients are averaged explicitly:

- generic methods: a step pre-hook on the optimiser all-reduces (averages) every gradient
  before each optimiser step, so each step applies the gradient of the mean loss over the
  global batch, exactly as one process on the combined batch would;
- GAAL: the surgery must see global gradients, so its phase averages the gradients itself
  right after the backward (`Comm.average_grads`, which marks them so the hook does not
  average twice), selects the hard samples by a global entropy threshold
  (`Comm.all_gather`), and sums the per-rank guidance gradients (`Comm.sum`).

BatchNorm: on CUDA the encoders' BatchNorm layers become SyncBatchNorm, so batch statistics are
global too; gloo on the CPU has no SyncBatchNorm, so there each rank normalises with its own
shard's statistics (the only difference from one process on the combined batch).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

from gaal_cli.foundation.errors import GaalError


class Comm:
    """Single process: every collective is the identity."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Average `.grad` of `params` over ranks and mark them as already reduced."""

    def reduce_pending(self, params: Iterable[torch.Tensor]) -> None:
        """Average the gradients not yet reduced this step (called before optimiser steps)."""

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate a 1-d tensor of equal length from every rank, in rank order."""
        return tensor

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        """Wait for every rank."""


class TorchComm(Comm):
    """Collectives of an initialised torch.distributed process group."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self._reduced: set[int] = set()

    def average_grads(self, params: Iterable[torch.Tensor]) -> None:
        for p in params:
            if p.grad is not None and id(p) not in self._reduced:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)
                self._reduced.add(id(p))

    def reduce_pending(self, params: Iterable[torch.Tensor]) -> None:
        self.average_grads(params)
        self._reduced.clear()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        dist.barrier()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 (the rank that writes and prints)."""
    return os.environ.get("RANK", "0") == "0"


def init_from_environment(device_spec: str) -> tuple[Comm, str]:
    """Join the process group that torchrun describes in the environment.

    Returns:
        The communicator and the device this rank should use ('cuda:LOCAL_RANK' on GPUs).
    """
    if not launched_by_torchrun():
        return Comm(), device_spec
    use_cuda = torch.cuda.is_available() and device_spec in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device_spec = f"cuda:{local_rank}"
    return TorchComm(), device_spec


def attach(method: torch.nn.Module, comm: Comm, device: torch.device) -> None:
    """Make `method` data-parallel over `comm` (no-op for one process); see `attach_optimizer`."""
    method.comm = comm
    if comm.world_size == 1:
        return
    if device.type == "cuda":
        method.encoders = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.encoders)
    # replicas start identical: broadcast rank 0's weights in case initialisation differed
    for tensor in list(method.parameters()) + list(method.buffers()):
        dist.broadcast(tensor.data, src=0)


def attach_optimizer(optimizer: torch.optim.Optimizer, comm: Comm) -> None:
    """Average pending gradients over `comm` before each step of `optimizer` (every stage's own)."""
    if comm.world_size == 1:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.register_step_pre_hook(lambda *_: comm.reduce_pending(params))


def check_batch(batch_size: int, comm: Comm) -> None:
    if batch_size % comm.world_size:
        raise GaalError(
            f"the global batch ({batch_size}) must divide evenly over {comm.world_size} processes",
            field="data.batch_size",
        )
