"""Per-level BCE and Dice terms of the partial-label loss, vectorised over (B, C)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from partialseg.losses.distributed import all_reduce_sum

DICE_DENOMINATOR_MIN = 1e-7


@dataclasses.dataclass
class LevelStatistics:
    """Sums over the valid voxels of each (sample, class) pair, each of shape (B, C).

    ``voxel_count`` has shape (B, 1) when the valid mask is shared by all classes.
    """

    bce_sum: torch.Tensor
    voxel_count: torch.Tensor
    true_positive: torch.Tensor
    prob_sum: torch.Tensor
    target_sum: torch.Tensor


def _masked_sum(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Sum (B, C, N) float32 values over N, weighted by a (B, N) or (B, C, N) mask."""
    if weights is None:
        return values.sum(-1)
    if weights.ndim == 2:
        # A batched matrix-vector product, which stores no full-size product.
        return torch.bmm(values, weights.unsqueeze(-1)).squeeze(-1)
    return (values * weights).sum(-1)


class _DifferentiableSums(torch.autograd.Function):
    """BCE sum, TP and sum(p) per (sample, class), with a single-pass gradient.

    With p = sigmoid(z), w the valid mask and g the target (zero where w is 0):

        bce_sum = sum w * softplus(z) - g * z   d/dz = w * p - g
        tp      = sum p * g                     d/dz = p * (1 - p) * g
        prob    = sum w * p                     d/dz = p * (1 - p) * w

    The backward pass combines the three terms directly instead of chaining the
    gradients of every elementwise step, which saves time and memory. Only p and
    g are kept for it, so sigmoid runs once.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, g: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = logits.float().flatten(2)

        # BCE with logits is softplus(z) - g*z per voxel, where softplus(z) =
        # log(1 + e^z) is computed stably. Subtracting per voxel avoids the
        # cancellation between two large float32 sums when most logits are large
        # and correct.
        voxel_bce = F.softplus(z)
        voxel_bce.addcmul_(z, g, value=-1)
        bce_sum = _masked_sum(voxel_bce, weights)
        del voxel_bce  # frees the temporary before sigmoid allocates p

        p = torch.sigmoid(z)
        true_positive = (p * g).sum(-1)
        prob_sum = _masked_sum(p, weights)
        ctx.save_for_backward(p, g, weights)
        ctx.logits_shape, ctx.logits_dtype = logits.shape, logits.dtype
        return bce_sum, true_positive, prob_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_bce: torch.Tensor, grad_tp: torch.Tensor, grad_prob: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        p, g, weights = ctx.saved_tensors
        grad_bce, grad_tp, grad_prob = (x.unsqueeze(-1) for x in (grad_bce, grad_tp, grad_prob))
        if weights is not None and weights.ndim == 2:
            weights = weights.unsqueeze(1)

        # Dice part: p * (1 - p) * (grad_tp * g + grad_prob * w), computed in place
        # as far as possible.
        grad = 1 - p
        grad *= p
        factor = g * grad_tp
        factor += grad_prob if weights is None else weights * grad_prob
        grad *= factor

        # BCE part: grad_bce * (w * p - g), computed in the same temporary.
        if weights is None:
            factor.copy_(p)
        else:
            torch.mul(p, weights, out=factor)
        factor -= g
        factor *= grad_bce
        grad += factor
        return grad.view(ctx.logits_shape).to(ctx.logits_dtype), None, None


def level_statistics(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None
) -> LevelStatistics:
    """Compute the BCE and Dice sums of one level in float32.

    Args:
        logits: Logits (B, C, *spatial) of any floating dtype.
        targets: Targets (B, C, *spatial) in [0, 1], already 0 where ``valid`` is false.
        valid: None, a voxel mask (B, *spatial) or an element mask (B, C, *spatial).
    """
    # One float32 copy of the targets is faster on the CPU than uint8 operands,
    # which every mixed-dtype operation would cast to a float32 temporary again.
    g = targets.to(device=logits.device, dtype=torch.float32).flatten(2)
    weights = None
    if valid is not None:
        flat_start = 1 if valid.ndim == logits.ndim - 1 else 2
        weights = valid.to(device=logits.device, dtype=torch.float32).flatten(flat_start)

    bce_sum, true_positive, prob_sum = _DifferentiableSums.apply(logits, g, weights)
    if weights is None:
        voxel_count = bce_sum.new_full((g.shape[0], 1), float(g.shape[-1]))
    else:
        voxel_count = weights.sum(-1, keepdim=weights.ndim == 2)
    return LevelStatistics(
        bce_sum=bce_sum,
        voxel_count=voxel_count,
        true_positive=true_positive,
        prob_sum=prob_sum,
        target_sum=g.sum(-1),
    )


def bce_term(stats: LevelStatistics, annotated: torch.Tensor) -> torch.Tensor:
    """Sum over annotated pairs of the BCE averaged over each pair's valid voxels."""
    per_pair = stats.bce_sum / stats.voxel_count.clamp_min(1)
    return torch.where(annotated, per_pair, 0).sum()


def dice_terms(
    stats: LevelStatistics,
    annotated: torch.Tensor,
    *,
    batch_dice: bool,
    smooth: float,
    distributed: bool,
    group: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the Dice of every class and how many annotated pairs each class has.

    With ``batch_dice`` TP, FP and FN are pooled over the samples that annotate a
    class. Otherwise each annotated pair gets its own Dice and a class's Dice is
    their mean. When ``distributed`` is true the pooled sums and counts cover the
    samples of every rank.

    Returns:
        The per-class Dice (C,) and the per-class count of annotated pairs (C,),
        both summed over ranks when distributed.
    """
    # 2*TP + FP + FN equals sum(p) + sum(g) over the valid voxels.
    denominator = stats.prob_sum + stats.target_sum
    pair_count = annotated.sum(0).to(denominator.dtype)
    if batch_dice:
        numerator = torch.where(annotated, 2 * stats.true_positive, 0).sum(0)
        denominator = torch.where(annotated, denominator, 0).sum(0)
        pooled = torch.stack([numerator, denominator, pair_count])
        if distributed:
            pooled = all_reduce_sum(pooled, group=group)
        numerator, denominator, pair_count = pooled.unbind(0)
        dice = (numerator + smooth) / (denominator + smooth).clamp_min(DICE_DENOMINATOR_MIN)
        return dice, pair_count

    per_pair = (2 * stats.true_positive + smooth) / (denominator + smooth).clamp_min(
        DICE_DENOMINATOR_MIN
    )
    pooled = torch.stack([torch.where(annotated, per_pair, 0).sum(0), pair_count])
    if distributed:
        pooled = all_reduce_sum(pooled, group=group)
    dice_sum, pair_count = pooled.unbind(0)
    return dice_sum / pair_count.clamp_min(1), pair_count
