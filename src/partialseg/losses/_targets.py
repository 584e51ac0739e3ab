"""Conversion of loss targets into per-class binary maps and valid-voxel masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from partialseg.labels._encoding import as_index_tensor

if TYPE_CHECKING:
    from partialseg.labels import LabelRegistry


def resize_nearest(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the trailing ``len(size)`` axes with nearest-neighbour selection.

    Output index i along an axis of input length n and output length m reads input
    index floor(i * n / m), the convention of ``F.interpolate(mode="nearest")``.
    Unlike ``F.interpolate`` this works for every dtype, including integer label maps.
    """
    first_axis = tensor.ndim - len(size)
    for offset, target_length in enumerate(size):
        axis = first_axis + offset
        length = tensor.shape[axis]
        if length != target_length:
            index = torch.arange(target_length, device=tensor.device) * length // target_length
            tensor = tensor.index_select(axis, index)
    return tensor


def label_map_targets(
    label_maps: torch.Tensor,
    *,
    registry: LabelRegistry,
    dataset_names: Sequence[str],
    ignore_index: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode label maps of shape (B, *spatial) with the registry's lookup tables.

    Returns:
        Binary targets (B, C, *spatial) uint8 and a bool voxel mask (B, *spatial)
        that is false at ``ignore_index`` and at each dataset's ignore value, or
        None when every voxel is valid.
    """
    label_maps = as_index_tensor(label_maps, name="label maps")
    ignored = torch.zeros_like(label_maps, dtype=torch.bool)
    if ignore_index is not None:
        ignored |= label_maps == ignore_index
    per_dataset = [registry.dataset(name).ignore_value for name in dataset_names]
    if any(value is not None for value in per_dataset):
        values = torch.tensor(
            [-1 if v is None else v for v in per_dataset], device=label_maps.device
        )
        ignored |= label_maps == values.view(-1, *[1] * (label_maps.ndim - 1))
    valid = None
    if ignored.any():
        label_maps = label_maps.masked_fill(ignored, 0)
        valid = ~ignored
    return registry.encode_batch(label_maps, dataset_names), valid


def binary_targets(
    targets: torch.Tensor, *, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check binary targets of shape (B, C, *spatial) and mask ``ignore_index``.

    Returns:
        The targets with ignored elements set to 0, and a bool mask of the same
        shape that is false at ignored elements, or None when none is ignored.

    Raises:
        ValueError: If a target outside the ignored elements is not in [0, 1].
    """
    valid = None
    if ignore_index is not None:
        ignored = targets == ignore_index
        if ignored.any():
            targets = targets.masked_fill(ignored, 0)
            valid = ~ignored
    if targets.dtype != torch.bool and targets.numel() > 0:
        low, high = torch.aminmax(targets)
        if low < 0 or high > 1:
            raise ValueError(
                f"binary targets must lie in [0, 1], got values in [{low.item()}, {high.item()}]; "
                "pass label maps of shape (B, *spatial) with a registry and dataset_names, "
                "or set ignore_index for the unlabelled value"
            )
    return targets, valid
