"""Lookup-table encoding of integer label maps into per-class binary targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from partialseg.labels._dataset import DatasetLabels

_INDEX_DTYPES = (torch.int32, torch.int64)


def as_index_tensor(label_map: Any, *, name: str = "label_map") -> torch.Tensor:
    """Return ``label_map`` as an int32 or int64 tensor usable as an index.

    Raises:
        TypeError: If ``label_map`` is not an integer numpy array or tensor.
    """
    if isinstance(label_map, np.ndarray):
        if label_map.dtype.kind not in "iu":
            raise TypeError(
                f"{name} must have an integer dtype, got numpy {label_map.dtype}; convert an "
                "integer-valued float map with np.rint(x).astype(np.int64)"
            )
        if label_map.dtype not in (np.int32, np.int64):
            label_map = label_map.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(label_map))
    if not isinstance(label_map, torch.Tensor):
        raise TypeError(
            f"{name} must be a numpy array or a torch tensor, got {type(label_map).__name__}"
        )
    if (
        label_map.dtype.is_floating_point
        or label_map.dtype.is_complex
        or label_map.dtype == torch.bool
    ):
        raise TypeError(
            f"{name} must have an integer dtype, got {label_map.dtype}; convert an "
            "integer-valued float map with x.round().long()"
        )
    # uint8 tensors would be read as boolean masks by advanced indexing, so widen them.
    return label_map if label_map.dtype in _INDEX_DTYPES else label_map.long()


def build_lookup(
    datasets: Sequence[DatasetLabels], dataset_name: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the lookup tables of one dataset.

    Returns:
        ``class_table`` of shape (C, V) uint8, where V is the largest declared value
        plus one and ``class_table[c, v]`` is 1 when value v belongs to class c, and
        ``declared`` of shape (V,) bool, true for the declared values.
    """
    entry = next(d for d in datasets if d.name == dataset_name)
    num_values = max(entry.label_values) + 1
    num_classes = sum(len(d.classes) for d in datasets)
    class_table = torch.zeros(num_classes, num_values, dtype=torch.uint8)
    declared = torch.zeros(num_values, dtype=torch.bool)
    declared[list(entry.label_values)] = True
    channel = 0
    for dataset in datasets:
        for values in dataset.classes.values():
            if dataset.name == dataset_name:
                class_table[channel, list(values)] = 1
            channel += 1
    return class_table.to(device), declared.to(device)


def label_map_is_declared(label_map: torch.Tensor, declared: torch.Tensor) -> bool:
    """Return whether every value of ``label_map`` is a declared value."""
    if label_map.numel() == 0:
        return True
    low, high = torch.aminmax(label_map)
    if int(low) < 0 or int(high) >= declared.numel():
        return False
    return bool(declared[label_map].all())
