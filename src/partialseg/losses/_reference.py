"""A loop-based float64 version of the partial-label loss, for tests and benchmarks.

It follows the formulas of :class:`partialseg.losses.PartialLabelLoss` one
(sample, class) pair at a time, with TP, FP and FN summed term by term, and shares
no code with the vectorised implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def reference_partial_label_loss(
    logits_levels: Sequence[torch.Tensor],
    target_levels: Sequence[torch.Tensor],
    annotated: torch.Tensor,
    *,
    weights: Sequence[float],
    batch_dice: bool = True,
    class_reduction: str = "sum",
    smooth: float = 0.0,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    ignore_index: float | None = None,
) -> torch.Tensor:
    """Compute the partial-label loss with Python loops over samples and classes.

    Args:
        logits_levels: Logits (B, C, *spatial) per level.
        target_levels: Binary targets (B, C, *spatial) per level. Elements equal
            to ``ignore_index`` are left out of their (sample, class) pair.
        annotated: Bool tensor (B, C).
        weights: Deep-supervision weight per level.
        batch_dice: Pool TP, FP and FN over samples per class.
        class_reduction: "sum" or "mean".
        smooth: Dice smoothing constant.
        bce_weight: Factor of the BCE term.
        dice_weight: Factor of the Dice term.
        ignore_index: Target value to leave out, or None.

    Returns:
        A float64 scalar that keeps the autograd graph to the logits.
    """
    total = torch.zeros((), dtype=torch.float64)
    for weight, logits, targets in zip(weights, logits_levels, target_levels, strict=True):
        if weight == 0:
            continue
        bce, dice = _reference_level(
            logits.double(),
            targets.double(),
            annotated,
            batch_dice=batch_dice,
            class_reduction=class_reduction,
            smooth=smooth,
            ignore_index=ignore_index,
        )
        total = total + weight * (bce_weight * bce - dice_weight * dice)
    return total


def _reference_level(
    logits: torch.Tensor,
    targets: torch.Tensor,
    annotated: torch.Tensor,
    *,
    batch_dice: bool,
    class_reduction: str,
    smooth: float,
    ignore_index: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    num_samples, num_classes = logits.shape[:2]
    zero = torch.zeros((), dtype=torch.float64)
    bce_total = zero
    num_pairs = 0
    pooled = [[zero, zero, zero] for _ in range(num_classes)]
    pair_dice = [[] for _ in range(num_classes)]

    for b in range(num_samples):
        for c in range(num_classes):
            if not annotated[b, c]:
                continue
            z = logits[b, c].flatten()
            g = targets[b, c].flatten()
            if ignore_index is not None:
                keep = g != ignore_index
                z, g = z[keep], g[keep]
            p = torch.sigmoid(z)
            voxel_bce = -(g * F.logsigmoid(z) + (1 - g) * F.logsigmoid(-z))
            bce_total = bce_total + voxel_bce.sum() / max(z.numel(), 1)
            num_pairs += 1

            tp = (p * g).sum()
            fp = (p * (1 - g)).sum()
            fn = ((1 - p) * g).sum()
            pooled[c] = [pooled[c][0] + tp, pooled[c][1] + fp, pooled[c][2] + fn]
            pair_dice[c].append(_dice(tp, fp, fn, smooth))

    class_dice = []
    for c in range(num_classes):
        if not pair_dice[c]:
            continue
        if batch_dice:
            class_dice.append(_dice(*pooled[c], smooth))
        else:
            class_dice.append(sum(pair_dice[c]) / len(pair_dice[c]))
    dice_total = sum(class_dice, zero)

    if class_reduction == "mean":
        bce_total = bce_total / max(num_pairs, 1)
        dice_total = dice_total / max(len(class_dice), 1)
    return bce_total, dice_total


def _dice(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, smooth: float) -> torch.Tensor:
    return (2 * tp + smooth) / torch.clamp(2 * tp + fp + fn + smooth, min=1e-7)
