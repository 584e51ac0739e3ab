"""Process-group setup for training with DistributedDataParallel under ``torchrun``."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this process in a training run of one or more processes.

    Attributes:
        rank: Global rank of this process, 0 without ``torch.distributed``.
        local_rank: Rank on this machine, which selects the GPU.
        world_size: Number of processes.
        device: Device this process trains on.
        owns_process_group: True when :func:`init_distributed` created the process
            group, so :func:`close_distributed` should destroy it.

    Example:
        >>> context = DistributedContext(0, 0, 1, torch.device("cpu"))
        >>> context.is_main, context.is_distributed
        (True, False)
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` describes, or run as a single process.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. With a world size
    above 1 and no initialised process group, this creates one with the NCCL
    backend for CUDA devices and gloo otherwise, and each process takes GPU
    ``LOCAL_RANK``. A process group that the caller initialised is used as it is.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``. Under ``torchrun`` every CUDA device becomes
            ``cuda:LOCAL_RANK``.

    Returns:
        The context of this process.

    Raises:
        ValueError: If ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` is not an integer,
            or a CUDA device is requested without CUDA.

    Example:
        >>> init_distributed("cpu")
        DistributedContext(rank=0, local_rank=0, world_size=1, device=device(type='cpu'), ...)
    """
    resolved = _resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        local_rank = _env_int("LOCAL_RANK", 0)
        return DistributedContext(
            dist.get_rank(), local_rank, dist.get_world_size(), _local(resolved, local_rank)
        )
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistributedContext(0, 0, 1, resolved)

    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    resolved = _local(resolved, local_rank)
    # NOTE: the tests run gloo on the CPU only; the NCCL path with one GPU per
    # process has not been run by them.
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    logger.info("rank %d of %d joined the %s process group", rank, world_size, backend)
    return DistributedContext(rank, local_rank, world_size, resolved, owns_process_group=True)


def close_distributed(context: DistributedContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it.

    Args:
        context: The context returned by :func:`init_distributed`.

    Example:
        >>> close_distributed(init_distributed("cpu"))
    """
    if context.owns_process_group and dist.is_initialized():
        # Without the barrier, a rank that finishes first destroys its gloo
        # group while rank 0 still writes the model. In one 2-process test run
        # (torch 2.14) that rank then aborted at exit with "terminate called
        # without an active exception".
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(
    network: nn.Module, context: DistributedContext, *, find_unused_parameters: bool = True
) -> nn.Module:
    """Wrap ``network`` in DistributedDataParallel when more than one process trains.

    DDP only synchronises the parameters that have ``requires_grad=True`` when it
    is built, so call this while every parameter to be trained later is trainable.
    A parameter that gets no gradient in a step (a frozen backbone, or the head of
    a deep-supervision level with loss weight 0) needs ``find_unused_parameters``.

    Args:
        network: The network, already on ``context.device``.
        context: The context returned by :func:`init_distributed`.
        find_unused_parameters: Let DDP skip parameters without a gradient, at the
            cost of one graph traversal per step.

    Returns:
        The DDP wrapper, or ``network`` itself in a single process.

    Example:
        >>> wrap_model(nn.Linear(2, 2), init_distributed("cpu"))
        Linear(in_features=2, out_features=2, bias=True)
    """
    if not context.is_distributed:
        return network
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(
        network, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def barrier(context: DistributedContext) -> None:
    """Wait until every rank reaches this call; return at once in a single process.

    Example:
        >>> barrier(init_distributed("cpu"))
    """
    if context.is_distributed:
        dist.barrier()


def gather_to_main(value: Any, context: DistributedContext) -> list[Any] | None:
    """Collect a picklable value from every rank on rank 0.

    Every rank must call this. Only trusted values of this run travel, because
    ``torch.distributed`` pickles them.

    Args:
        value: This rank's value.
        context: The context returned by :func:`init_distributed`.

    Returns:
        The values of all ranks in rank order on rank 0, None on the other ranks.

    Example:
        >>> gather_to_main({"rank": 0}, init_distributed("cpu"))
        [{'rank': 0}]
    """
    if not context.is_distributed:
        return [value]
    gathered: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} needs CUDA, which this PyTorch build or machine lacks; "
            "pass device='cpu' or 'auto'"
        )
    return resolved


def _local(device: torch.device, local_rank: int) -> torch.device:
    if device.type == "cuda":
        return torch.device("cuda", local_rank)
    return device


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError as error:
        raise ValueError(
            f"environment variable {name}={text!r} must be an integer; torchrun sets it, "
            "so unset it when not running under torchrun"
        ) from error
