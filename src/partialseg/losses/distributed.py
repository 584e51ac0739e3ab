"""Autograd-aware collectives for losses that pool statistics over all ranks."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def distributed_world_size(group: Any = None) -> int:
    """Return the number of ranks, or 1 when ``torch.distributed`` is not initialised.

    Args:
        group: Process group, or None for the default group.

    Returns:
        The world size of ``group``.

    Example:
        >>> distributed_world_size()
        1
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _AllReduceSum(torch.autograd.Function):
    """Sum a tensor over ranks, and its gradients over ranks in the backward pass.

    Every rank receives the same sum, so the derivative of rank r's output with
    respect to rank s's input is the identity for all r and s. The gradient of
    rank s's input is therefore the sum of every rank's output gradient.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, keeping the autograd graph.

    The backward pass sums the incoming gradients over the ranks, which is the
    exact adjoint of the forward sum. When the result feeds a loss that every rank
    computes identically, each rank's input gradient is therefore world-size
    times its own contribution, and DDP's division by the world size restores the
    gradient of the single-process loss. Without an initialised process group the
    tensor is returned unchanged.

    Args:
        tensor: Tensor with the same shape on every rank.
        group: Process group, or None for the default group.

    Returns:
        The elementwise sum over ranks.

    Example:
        >>> import torch
        >>> all_reduce_sum(torch.tensor([1.0, 2.0])).tolist()
        [1.0, 2.0]
    """
    if distributed_world_size(group) == 1:
        return tensor
    return _AllReduceSum.apply(tensor, group)
