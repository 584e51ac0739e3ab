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
    """Sum (B, C, N) values over N, weighted by a (B, N) or (B, C, N) mask.

    ``einsum`` lowers to a batched matrix product, so the weighted values are never
    stored as a full-size tensor.
    """
    if weights is None:
        return values.sum(-1)
    if weights.ndim == 2:
        return torch.einsum("bcn,bn->bc", values, weights)
    return torch.einsum("bcn,bcn->bc", values, weights)


def level_statistics(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None
) -> LevelStatistics:
    """Compute the BCE and Dice sums of one level in float32.

    Args:
        logits: Logits (B, C, *spatial) of any floating dtype.
        targets: Targets (B, C, *spatial) in [0, 1], already 0 where ``valid`` is false.
        valid: None, a voxel mask (B, *spatial) or an element mask (B, C, *spatial).
    """
    z = logits.float().flatten(2)
    g = targets.to(device=z.device, dtype=torch.float32).flatten(2)
    weights = None
    if valid is not None:
        flat_start = 1 if valid.ndim == logits.ndim - 1 else 2
        weights = valid.to(device=z.device, dtype=torch.float32).flatten(flat_start)

    # BCE with logits is softplus(z) - g*z per voxel, where softplus(z) = log(1 + e^z)
    # is computed stably. Subtracting per voxel, before summing, keeps the float32
    # rounding error per voxel near eps * |z| instead of eps * sum(|z|). g is already
    # zero at invalid voxels. softplus saves its input, not its output, for the
    # backward pass, so the in-place update is safe.
    voxel_bce = F.softplus(z)
    voxel_bce.addcmul_(z, g, value=-1)
    bce_sum = _masked_sum(voxel_bce, weights)
    del voxel_bce
    if weights is None:
        voxel_count = z.new_full((z.shape[0], 1), float(z.shape[-1]))
    else:
        voxel_count = weights.sum(-1, keepdim=weights.ndim == 2)

    p = torch.sigmoid(z)
    return LevelStatistics(
        bce_sum=bce_sum,
        voxel_count=voxel_count,
        true_positive=torch.einsum("bcn,bcn->bc", p, g),
        prob_sum=_masked_sum(p, weights),
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
