"""Multi-process data-parallel helpers (``torchrun`` / ``torch.distributed.run``).

``fit`` calls :func:`setup_distributed`; when the launcher's ``WORLD_SIZE`` > 1 it initialises the
default process group (gloo on CPU, nccl on CUDA) and the model is wrapped in
``DistributedDataParallel``. Everything here is a no-op in a plain single process, so library code
can call these helpers unconditionally.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from hwprune.base.errors import ConfigError

__all__ = [
    "DistInfo",
    "env_info",
    "setup_distributed",
    "shutdown_distributed",
    "is_distributed",
    "is_main_process",
    "get_rank",
    "get_world_size",
    "barrier",
    "all_reduce_sum",
    "broadcast_buffers",
    "wrap_model",
    "unwrap",
]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Process coordinates set by the launcher (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def env_info() -> DistInfo:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment (defaults: one process)."""
    try:
        info = DistInfo(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc})") from exc
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ConfigError(f"invalid launcher environment: RANK={info.rank}, WORLD_SIZE={info.world_size}")
    return info


def setup_distributed(device: torch.device) -> DistInfo:
    """Initialise the default process group if launched with ``WORLD_SIZE`` > 1.

    Backend: ``nccl`` for a CUDA device (which must be ``cuda:LOCAL_RANK``), ``gloo`` otherwise.
    An already initialised group is reused. Returns the process coordinates.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    info = env_info()
    if info.world_size == 1:
        return info
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    _LOG.info("process group up: backend=%s rank=%d world_size=%d", backend, info.rank, info.world_size)
    return info


def shutdown_distributed() -> None:
    """Destroy the default process group if one is initialised (call once at program exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0: the only process that writes logs, checkpoints and artifacts.

    Before the process group exists (a train job writes ``config.yaml`` before ``fit`` sets it up)
    the launcher's ``RANK`` decides, so every caller gets the same answer at any time.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_info().rank == 0


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over processes in place and return it (identity when not distributed)."""
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running stats) to every process, in place.

    DDP broadcasts buffers *before* each forward, so after the last step each replica holds its own
    running statistics; call this before evaluating or checkpointing to make replicas identical.
    """
    if not is_distributed():
        return
    for buf in unwrap(model).buffers():
        dist.broadcast(buf.data, src=0)


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap ``model`` (already on ``device``) in DistributedDataParallel when distributed.

    DDP broadcasts rank 0's parameters at construction, so every replica starts identical.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """Return the plain module inside a DistributedDataParallel/DataParallel wrapper."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model
