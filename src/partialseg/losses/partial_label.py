"""BCE plus batch Dice restricted to the classes each sample's dataset annotates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from partialseg.losses._checks import (
    align_target_levels,
    autocast_disabled,
    check_logits,
    check_non_negative,
    check_registry,
    resize_to_level,
)
from partialseg.losses._targets import binary_targets, label_map_targets
from partialseg.losses._terms import bce_term, dice_terms, level_statistics
from partialseg.losses.distributed import all_reduce_sum, distributed_world_size

if TYPE_CHECKING:
    from partialseg.labels import LabelRegistry

CLASS_REDUCTIONS = ("sum", "mean")


def deep_supervision_weights(num_levels: int) -> list[float]:
    """Return the MultiTalent deep-supervision weights for ``num_levels`` outputs.

    Weight i is proportional to 2^-i (highest resolution first), the lowest
    resolution output gets weight 0 and the weights sum to 1 (Ulrich et al., MICCAI
    2023, following nnU-Net). A single output gets weight 1.

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
    r"""Sigmoid BCE plus Dice over annotated (sample, class) pairs only.

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
    the target contributes Dice 0. ``BCE - DC`` differs from ``BCE + (1 - DC)`` by
    a constant. The defaults reproduce the formula above. The loss is computed in
    float32 whatever the dtype of the logits, sigmoid is evaluated once per level,
    and BCE uses softplus terms, so it stays finite for large logits.

    Options change the formula as follows:

    - ``batch_dice=False``: every annotated (sample, class) pair gets its own Dice
      from its own TP, FP and FN, and a class's Dice is the mean over the samples
      that annotate it. The class sum then has the same scale as batch Dice.
    - ``class_reduction="mean"``: BCE_i is divided by the number of annotated
      pairs and DC_i by the number of classes annotated by any sample.
    - ``smooth``: Dice becomes (2*TP + smooth) / max(2*TP + FP + FN + smooth, 1e-7).
      With ``smooth > 0`` an annotated empty class whose prediction is empty has
      Dice 1 instead of 0.
    - ``ignore_index``: voxels of integer label maps with this value are left out
      of every class. Elements of binary maps with this value are left out of
      their own class only. Left-out voxels count neither in the BCE mean nor in
      the Dice sums. A registry dataset's ``ignore_value`` is always left out.

    Under ``torch.distributed`` (see ``distributed``) the Dice sums are pooled
    over the global batch with an autograd-aware all-reduce, and each rank's BCE
    is multiplied by the world size W. Then, for the same samples split over
    ranks, (a) the value returned on every rank equals the single-process loss on
    the concatenated batch, and (b) after DDP averages the parameter gradients
    over ranks, they equal the single-process gradients. The gradient of a rank's
    own logits is W times the single-process gradient of those logits.

    Args:
        batch_dice: Pool TP, FP and FN over the annotated samples of the batch.
        class_reduction: "sum" (published) or "mean", see above.
        smooth: Constant added to the Dice numerator and denominator.
        bce_weight: Factor of the BCE term.
        dice_weight: Factor of the Dice term.
        deep_supervision_weights: One weight per level for list inputs. Defaults
            to :func:`deep_supervision_weights` of the number of levels.
        ignore_index: Target value of unlabelled voxels, or None.
        registry: Label registry used to encode integer label maps and to derive
            the annotated mask from ``dataset_names``.
        distributed: Pool over ranks. None pools when ``torch.distributed`` is
            initialised with more than one rank.
        process_group: Process group of the all-reduce, or None for the default group.

    Raises:
        ValueError: If an option is out of range.

    Example:
        >>> import torch
        >>> loss_fn = PartialLabelLoss()
        >>> logits = torch.zeros(1, 2, 4)
        >>> targets = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0]]])
        >>> annotated = torch.tensor([[True, False]])
        >>> round(float(loss_fn(logits, targets, annotated)), 4)  # log(2) - 0.5
        0.1931
    """

    def __init__(
        self,
        *,
        batch_dice: bool = True,
        class_reduction: Literal["sum", "mean"] = "sum",
        smooth: float = 0.0,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        deep_supervision_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        registry: LabelRegistry | None = None,
        distributed: bool | None = None,
        process_group: Any = None,
    ) -> None:
        super().__init__()
        if class_reduction not in CLASS_REDUCTIONS:
            raise ValueError(
                f"class_reduction must be one of {CLASS_REDUCTIONS}, got {class_reduction!r}"
            )
        check_non_negative(smooth=smooth, bce_weight=bce_weight, dice_weight=dice_weight)
        if deep_supervision_weights is not None:
            deep_supervision_weights = [float(w) for w in deep_supervision_weights]
            if not deep_supervision_weights:
                raise ValueError("deep_supervision_weights must not be empty")
            check_non_negative(deep_supervision_weights=deep_supervision_weights)

        self.batch_dice = batch_dice
        self.class_reduction = class_reduction
        self.smooth = float(smooth)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.deep_supervision_weights = deep_supervision_weights
        self.ignore_index = ignore_index
        self.registry = registry
        self.distributed = distributed
        self.process_group = process_group

    def forward(
        self,
        logits: torch.Tensor | Sequence[torch.Tensor],
        targets: torch.Tensor | Sequence[torch.Tensor],
        annotated: torch.Tensor | None = None,
        *,
        dataset_names: Sequence[str] | None = None,
        registry: LabelRegistry | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: Logits of shape (B, C, *spatial), or a list of them, highest
                resolution first.
            targets: Per level either binary maps (B, C, *spatial) of any dtype with
                values in [0, 1], or integer label maps (B, *spatial) that the
                registry encodes. Either one tensor per level, or one tensor at the
                resolution of the first level, which is resized to the lower levels
                by nearest-neighbour selection.
            annotated: Bool tensor (B, C), true where sample b's dataset annotates
                class c. Derived from ``dataset_names`` and the registry if omitted.
            dataset_names: The dataset of each sample, needed for label maps and
                when ``annotated`` is omitted.
            registry: Overrides the registry given to the constructor.

        Returns:
            A float32 scalar.

        Raises:
            ValueError: If shapes, level counts or the registry do not match, or a
                binary target lies outside [0, 1].
            TypeError: If ``annotated`` is not a bool tensor.

        Example:
            >>> import torch
            >>> from partialseg.labels import LabelRegistry
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2], "tumor": [2]})
            >>> registry.add_dataset("D07", {"spleen": [1]})
            >>> loss_fn = PartialLabelLoss(registry=registry)
            >>> logits = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2)]
            >>> label_maps = torch.randint(0, 2, (2, 4, 4))
            >>> loss = loss_fn(logits, label_maps, dataset_names=["D01", "D07"])
            >>> loss.shape, loss.dtype
            (torch.Size([]), torch.float32)
        """
        logits_levels = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        weights = self._level_weights(len(logits_levels))
        registry = registry if registry is not None else self.registry
        first = logits_levels[0]
        check_logits(first)
        annotated = self._annotated_mask(annotated, first, registry, dataset_names)
        target_levels = align_target_levels(targets, logits_levels)
        world_size = self._world_size()

        loss = first.new_zeros((), dtype=torch.float32)
        bce_value = first.new_zeros((), dtype=torch.float32)
        dice_value = first.new_zeros((), dtype=torch.float32)
        # Autocast would run the batched matrix products of the voxel sums in half
        # precision, so it is switched off: the loss is computed in float32.
        with autocast_disabled(first.device.type):
            for weight, level_logits, level_targets in zip(
                weights, logits_levels, target_levels, strict=True
            ):
                if weight == 0:
                    continue
                bce, dice = self._level_terms(
                    level_logits, level_targets, annotated, registry, dataset_names, world_size
                )
                scaled_bce = world_size * self.bce_weight * bce
                loss = loss + weight * (scaled_bce - self.dice_weight * dice)
                bce_value = bce_value + weight * self.bce_weight * bce.detach()
                dice_value = dice_value + weight * self.dice_weight * dice.detach()
        if world_size == 1:
            return loss

        # The returned value is the global loss, while the gradient stays that of the
        # rank's share, so that DDP's gradient averaging gives the global gradient.
        global_value = all_reduce_sum(bce_value, group=self.process_group) - dice_value
        return loss + (global_value - loss).detach()

    def _level_terms(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        annotated: torch.Tensor,
        registry: LabelRegistry | None,
        dataset_names: Sequence[str] | None,
        world_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_logits(logits)
        targets = resize_to_level(targets, logits)
        if targets.ndim == logits.ndim - 1:
            check_registry(registry, dataset_names, logits)
            targets, valid = label_map_targets(
                targets,
                registry=registry,
                dataset_names=dataset_names,
                ignore_index=self.ignore_index,
            )
        else:
            targets, valid = binary_targets(targets, ignore_index=self.ignore_index)

        stats = level_statistics(logits, targets, valid)
        bce = bce_term(stats, annotated)
        dice, pair_count = dice_terms(
            stats,
            annotated,
            batch_dice=self.batch_dice,
            smooth=self.smooth,
            distributed=world_size > 1,
            group=self.process_group,
        )

        annotated_classes = pair_count > 0
        dice = torch.where(annotated_classes, dice, 0).sum()
        if self.class_reduction == "mean":
            bce = bce / pair_count.sum().clamp_min(1)
            dice = dice / annotated_classes.sum().clamp_min(1)
        return bce, dice

    def _level_weights(self, num_levels: int) -> list[float]:
        if self.deep_supervision_weights is None:
            return deep_supervision_weights(num_levels)
        if len(self.deep_supervision_weights) != num_levels:
            raise ValueError(
                f"deep_supervision_weights has {len(self.deep_supervision_weights)} entries "
                f"but the network returned {num_levels} levels"
            )
        return self.deep_supervision_weights

    def _world_size(self) -> int:
        if self.distributed is False:
            return 1
        world_size = distributed_world_size(self.process_group)
        if self.distributed and world_size == 1:
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group "
                "with more than one rank; call init_process_group or pass distributed=None"
            )
        return world_size

    def _annotated_mask(
        self,
        annotated: torch.Tensor | None,
        logits: torch.Tensor,
        registry: LabelRegistry | None,
        dataset_names: Sequence[str] | None,
    ) -> torch.Tensor:
        if annotated is None:
            if registry is None or dataset_names is None:
                raise ValueError(
                    "annotated is required unless both a registry and dataset_names are "
                    "given, from which the loss derives it"
                )
            check_registry(registry, dataset_names, logits)
            annotated = registry.annotated_mask(dataset_names)
        if not isinstance(annotated, torch.Tensor) or annotated.dtype != torch.bool:
            received = getattr(annotated, "dtype", type(annotated).__name__)
            raise TypeError(
                f"annotated must be a bool tensor, got {received}; convert it with .bool()"
            )
        if annotated.shape != logits.shape[:2]:
            raise ValueError(
                f"annotated must have shape (B, C) = {tuple(logits.shape[:2])}, "
                f"got {tuple(annotated.shape)}"
            )
        return annotated.to(logits.device)
