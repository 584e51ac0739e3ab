"""BCE plus batch Dice restricted to the classes each sample's dataset annotates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DICE_DENOMINATOR_MIN = 1e-7


def deep_supervision_weights(num_levels: int) -> list[float]:
    """Return the MultiTalent deep-supervision weights for ``num_levels`` outputs.

    Weight i is proportional to 2^-i (highest resolution first), the lowest
    resolution output gets weight 0 and the weights sum to 1. A single output gets
    weight 1.

    Args:
        num_levels: Number of network outputs.

    Returns:
        One weight per output.

    Raises:
        ValueError: If ``num_levels`` is not positive.

    Example:
        >>> [round(w * 15) for w in deep_supervision_weights(5)]
        [8, 4, 2, 1, 0]
        >>> deep_supervision_weights(1)
        [1.0]
    """
    if num_levels < 1:
        raise ValueError(f"num_levels must be at least 1, got {num_levels}")
    if num_levels == 1:
        return [1.0]
    weights = [2.0**-i for i in range(num_levels)]
    weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


class PartialLabelLoss(nn.Module):
    """Sigmoid BCE plus batch Dice over annotated (sample, class) pairs only.

    This is the loss of MultiTalent (Ulrich et al., MICCAI 2023). For each
    deep-supervision level i, with V(b) the classes annotated by the dataset of
    sample b, p = sigmoid(z) and g the binary target::

        BCE_i = sum_b sum_{c in V(b)} mean over voxels of BCE(z_bc, g_bc)
        TP_c, FP_c, FN_c = sums of p*g, p*(1-g), (1-p)*g over the voxels of every
                           sample b with c in V(b)
        DC_i = sum over classes annotated by any sample of
               2*TP_c / max(2*TP_c + FP_c + FN_c, 1e-7)
        L = sum_i w_i * (BCE_i - DC_i)

    Classes a sample's dataset does not annotate contribute nothing for that
    sample: they are unknown, not negative. An annotated class that is empty in
    the target contributes Dice 0. The loss is computed in float32 whatever the
    dtype of the logits, and BCE uses log-sigmoid terms, so it stays finite for
    large logits under mixed precision.

    Args:
        deep_supervision_weights: One weight per level for list inputs. Defaults
            to :func:`deep_supervision_weights` of the number of levels.

    Example:
        >>> import torch
        >>> loss_fn = PartialLabelLoss()
        >>> logits = torch.zeros(1, 2, 4)
        >>> targets = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0]]])
        >>> annotated = torch.tensor([[True, False]])
        >>> round(float(loss_fn(logits, targets, annotated)), 4)  # log(2) - 0.5
        0.1931
    """

    def __init__(self, *, deep_supervision_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.deep_supervision_weights = (
            None
            if deep_supervision_weights is None
            else [float(w) for w in deep_supervision_weights]
        )

    def forward(
        self,
        logits: torch.Tensor | Sequence[torch.Tensor],
        targets: torch.Tensor | Sequence[torch.Tensor],
        annotated: torch.Tensor,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: Logits of shape (B, C, *spatial), or a list of them, highest
                resolution first.
            targets: Binary targets (any dtype, values 0 and 1) of the same shape
                as each logits tensor, or a list matching ``logits``.
            annotated: Bool tensor of shape (B, C), true where sample b's dataset
                annotates class c.

        Returns:
            A float32 scalar.

        Raises:
            ValueError: If shapes or the number of levels do not match.
        """
        logits_levels = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        target_levels = [targets] if isinstance(targets, torch.Tensor) else list(targets)
        if len(target_levels) != len(logits_levels):
            raise ValueError(
                f"got {len(logits_levels)} logits levels but {len(target_levels)} target "
                "levels; pass one targets tensor per logits tensor"
            )
        weights = self._level_weights(len(logits_levels))
        total = logits_levels[0].new_zeros((), dtype=torch.float32)
        for weight, level_logits, level_targets in zip(
            weights, logits_levels, target_levels, strict=True
        ):
            if weight == 0:
                continue
            _check_shapes(level_logits, level_targets, annotated)
            total = total + weight * _level_loss(level_logits, level_targets, annotated)
        return total

    def _level_weights(self, num_levels: int) -> list[float]:
        if self.deep_supervision_weights is None:
            return deep_supervision_weights(num_levels)
        if len(self.deep_supervision_weights) != num_levels:
            raise ValueError(
                f"deep_supervision_weights has {len(self.deep_supervision_weights)} entries "
                f"but the network returned {num_levels} levels"
            )
        return self.deep_supervision_weights


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor, annotated: torch.Tensor) -> None:
    if logits.ndim < 3:
        raise ValueError(f"logits must have shape (B, C, *spatial), got {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} differs from logits shape {tuple(logits.shape)}"
        )
    if annotated.shape != logits.shape[:2] or annotated.dtype != torch.bool:
        raise ValueError(
            f"annotated must be a bool tensor of shape (B, C) = {tuple(logits.shape[:2])}, "
            f"got {annotated.dtype} of shape {tuple(annotated.shape)}"
        )


def _level_loss(
    logits: torch.Tensor, targets: torch.Tensor, annotated: torch.Tensor
) -> torch.Tensor:
    z = logits.float().flatten(2)
    g = targets.to(device=z.device, dtype=torch.float32).flatten(2)
    annotated = annotated.to(z.device)
    num_voxels = z.shape[-1]

    # BCE with logits is softplus(z) - g*z; einsum reduces g*z without a full product.
    bce = (F.softplus(z).sum(-1) - torch.einsum("bcn,bcn->bc", z, g)) / num_voxels
    bce_total = torch.where(annotated, bce, 0).sum()

    p = torch.sigmoid(z)
    true_positive = torch.einsum("bcn,bcn->bc", p, g)
    # 2*TP + FP + FN equals sum(p) + sum(g).
    denominator = p.sum(-1) + g.sum(-1)
    pooled_tp = torch.where(annotated, true_positive, 0).sum(0)
    pooled_denominator = torch.where(annotated, denominator, 0).sum(0)
    dice = 2 * pooled_tp / pooled_denominator.clamp_min(DICE_DENOMINATOR_MIN)
    dice_total = torch.where(annotated.any(0), dice, 0).sum()
    return bce_total - dice_total
