"""Lookup-table encoding of integer label maps into per-class binary targets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
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
        label_map = np.ascontiguousarray(label_map)
        if not label_map.flags.writeable:
            # torch.from_numpy warns on read-only arrays such as SimpleITK array views.
            label_map = label_map.copy()
        return torch.from_numpy(label_map)
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


class EncodingMixin:
    """Annotated masks and label-map encoding of :class:`LabelRegistry`."""

    _datasets: dict[str, DatasetLabels]
    _lookup_cache: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]]

    def annotated_mask(self, dataset_names: Sequence[str]) -> torch.Tensor:
        """Return which classes each sample's dataset annotates.

        Args:
            dataset_names: The dataset of each sample of a batch.

        Returns:
            A bool tensor of shape (B, C), true where sample b's dataset annotates
            class c.

        Raises:
            ValueError: If a dataset is unknown.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> registry.add_dataset("D07", {"liver": [1], "spleen": [2]})
            >>> registry.annotated_mask(["D01", "D07"]).int().tolist()
            [[1, 0, 0], [0, 1, 1]]
        """
        if isinstance(dataset_names, str):
            raise TypeError(
                f"dataset_names must be a sequence with one name per sample, got the str "
                f"{dataset_names!r}; wrap a single name in a list"
            )
        mask = torch.zeros(len(dataset_names), self.num_classes, dtype=torch.bool)
        for row, name in enumerate(dataset_names):
            mask[row, self.channel_slice(name)] = True
        return mask

    def class_mask(self, class_names: Iterable[str]) -> torch.Tensor:
        """Return a bool vector over the output channels that is true for the given classes.

        Use it for datasets whose annotated classes vary per case, such as a
        per-class mask folder: stack one row per sample to get the (B, C)
        annotated mask of the loss.

        Args:
            class_names: Full or unambiguous bare class names.

        Returns:
            A bool tensor of shape (C,).

        Raises:
            ValueError: If a name is unknown or ambiguous.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1], "spleen": [2], "kidney": [3]})
            >>> registry.class_mask(["D01/liver", "kidney"]).tolist()
            [True, False, True]
        """
        if isinstance(class_names, str):
            raise TypeError(
                f"class_names must be an iterable of names, got the str {class_names!r}; "
                "wrap a single name in a list"
            )
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        for name in class_names:
            mask[self.channel_index(name)] = True
        return mask

    def _lookup(self, dataset_name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dataset_name, device)
        if key not in self._lookup_cache:
            datasets = list(self._datasets.values())
            self._lookup_cache[key] = build_lookup(datasets, dataset_name, device)
        return self._lookup_cache[key]

    def encode_targets(self, label_map: Any, dataset_name: str) -> torch.Tensor:
        """Encode an integer label map as one binary map per output class.

        One lookup-table gather encodes every class at once. Classes of other
        datasets, and voxels carrying the dataset's ``ignore_value``, encode as 0.

        Args:
            label_map: Integer numpy array or tensor of any spatial shape.
            dataset_name: The dataset the label map comes from.

        Returns:
            A uint8 tensor of shape (C, *spatial) with values 0 and 1, on the device
            of ``label_map`` (the CPU for numpy input).

        Raises:
            ValueError: If the dataset is unknown or the map contains an undeclared
                label value.
            TypeError: If ``label_map`` is not an integer array or tensor.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> import torch
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
            >>> registry.encode_targets(torch.tensor([[0, 1], [2, 2]]), "D01").tolist()
            [[[0, 1], [1, 1]], [[0, 0], [1, 1]]]
        """
        index = as_index_tensor(label_map)
        self.dataset(dataset_name)
        class_table, declared = self._lookup(dataset_name, index.device)
        if not label_map_is_declared(index, declared):
            self.validate_label_map(index, dataset_name)
        return class_table[:, index]

    def encode_batch(self, label_maps: Any, dataset_names: Sequence[str]) -> torch.Tensor:
        """Encode a batch of label maps, each from its own dataset.

        Args:
            label_maps: Integer array or tensor of shape (B, *spatial).
            dataset_names: The dataset of each sample, length B.

        Returns:
            A uint8 tensor of shape (B, C, *spatial).

        Raises:
            ValueError: If the lengths differ, a dataset is unknown or a map
                contains an undeclared value.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> import torch
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1]})
            >>> registry.add_dataset("D07", {"spleen": [1]})
            >>> registry.encode_batch(torch.tensor([[0, 1], [1, 1]]), ["D01", "D07"]).tolist()
            [[[0, 1], [0, 0]], [[0, 0], [1, 1]]]
        """
        index = as_index_tensor(label_maps, name="label_maps")
        if index.ndim < 1 or index.shape[0] != len(dataset_names):
            raise ValueError(
                f"label_maps of shape {tuple(index.shape)} must have one map per dataset "
                f"name along the first axis, got {len(dataset_names)} dataset names"
            )
        output = torch.empty(
            (index.shape[0], self.num_classes, *index.shape[1:]),
            dtype=torch.uint8,
            device=index.device,
        )
        # One gather per sample writes straight into the output, which avoids a
        # (C, B, *spatial) intermediate that a single batched gather would need.
        for sample, name in enumerate(dataset_names):
            output[sample] = self.encode_targets(index[sample], name)
        return output

    def validate_label_map(
        self, label_map: Any, dataset_name: str, *, source: str | Path | None = None
    ) -> None:
        """Raise ValueError if ``label_map`` contains a value its dataset does not declare.

        Args:
            label_map: Integer numpy array or tensor.
            dataset_name: The dataset the label map comes from.
            source: File the map was read from, named in the error message.

        Raises:
            ValueError: If the map contains undeclared values. The message names the
                source, the undeclared values and the declared ones.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> import numpy as np
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1]})
            >>> registry.validate_label_map(np.array([0, 1, 1]), "D01")
            >>> registry.validate_label_map(np.array([0, 5]), "D01", source="case_7.nii.gz")
            Traceback (most recent call last):
            ...
            ValueError: case_7.nii.gz: label map ... contains undeclared label value(s) [5]; ...
        """
        entry = self.dataset(dataset_name)
        values = torch.unique(as_index_tensor(label_map)).tolist()
        undeclared = sorted(set(values) - set(entry.label_values))
        if undeclared:
            where = f"{source}: " if source is not None else ""
            raise ValueError(
                f"{where}label map of dataset {dataset_name!r} contains undeclared label "
                f"value(s) {undeclared}; declared values are {list(entry.label_values)}. "
                "Fix the label file, or declare the values with label_values= in add_dataset"
            )
