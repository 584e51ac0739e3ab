"""Label registry: the classes of every dataset and their output channels."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from partialseg.labels._dataset import (
    FORMAT_VERSION,
    SEPARATOR,
    DatasetLabels,
    as_label_values,
    check_name,
    suggest_name,
)
from partialseg.labels._encoding import as_index_tensor, build_lookup, label_map_is_declared

logger = logging.getLogger(__name__)


class LabelRegistry:
    """Every dataset's classes, each class one sigmoid output channel.

    A class is a set of the label values of its dataset, so nested classes such as
    "liver including tumour" (values 1 and 2) and "tumour" (value 2) are both
    classes. Classes are named ``"<dataset>/<class>"``: two datasets that both
    annotate a liver get two channels, because their annotation protocols differ
    (Ulrich et al., MICCAI 2023). Channel order is datasets in insertion order,
    then classes in declaration order.

    Example:
        >>> import numpy as np
        >>> registry = LabelRegistry()
        >>> registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
        >>> registry.add_dataset("D07", {"liver": [1], "spleen": [2]})
        >>> registry.class_names
        ['D01/liver', 'D01/liver_tumor', 'D07/liver', 'D07/spleen']
        >>> registry.annotated_mask(["D07"]).tolist()
        [[False, False, True, True]]
        >>> registry.encode_targets(np.array([0, 1, 2]), "D01").tolist()
        [[0, 1, 1], [0, 0, 1], [0, 0, 0], [0, 0, 0]]
    """

    def __init__(self) -> None:
        self._datasets: dict[str, DatasetLabels] = {}
        self._lookup_cache: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- building ---------------------------------------------------------------------------

    def add_dataset(
        self,
        name: str,
        classes: Mapping[str, Sequence[int] | int],
        *,
        label_values: Sequence[int] | None = None,
        ignore_value: int | None = None,
    ) -> None:
        """Add a dataset and its classes; each class becomes a new output channel.

        Args:
            name: Dataset name, unique in the registry and without "/".
            classes: Class name to the label values it covers, in channel order. A
                single int stands for one value. Values must be positive, because 0
                is the background of every dataset.
            label_values: Every value that may occur in the dataset's label maps.
                Defaults to 0 plus the union of the class values (plus
                ``ignore_value``). Declared values outside every class are negative
                for every class.
            ignore_value: Label value of voxels that are unlabelled in every class,
                such as nnU-Net's "ignore" label. It must not belong to a class.

        Raises:
            ValueError: If the dataset exists, a name is empty or contains "/", a
                class is empty or contains 0, or ``label_values`` lacks a class
                value.
            TypeError: If a name is not a str or a value is not an int.

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D03", {"pancreas": [1, 2], "cancer": [2]},
            ...                      label_values=[0, 1, 2, 3])
            >>> registry.label_values_of("D03")
            (0, 1, 2, 3)
        """
        check_name(name, what="dataset name")
        if name in self._datasets:
            raise ValueError(
                f"dataset {name!r} is already in the registry; give the new dataset another "
                "name, or use merge() to combine registries that both define it"
            )
        if not isinstance(classes, Mapping) or not classes:
            raise ValueError(
                f"classes of dataset {name!r} must be a non-empty mapping of class name to "
                f"label values, got {classes!r}"
            )
        parsed: dict[str, tuple[int, ...]] = {}
        for class_name, values in classes.items():
            check_name(class_name, what=f"class name in dataset {name!r}")
            parsed[class_name] = as_label_values(
                values, what=f"values of class {name}/{class_name}"
            )
            if 0 in parsed[class_name]:
                raise ValueError(
                    f"class {name}/{class_name} covers label value 0, which is background; "
                    "remove 0 from its values"
                )
        union = set().union(*parsed.values())
        if ignore_value is not None:
            (ignore_value,) = as_label_values(ignore_value, what=f"ignore_value of {name!r}")
            if ignore_value in union:
                raise ValueError(
                    f"ignore_value {ignore_value} of dataset {name!r} belongs to a class; "
                    "an ignored value must not be part of any class"
                )
        if label_values is None:
            declared = {0} | union | ({ignore_value} if ignore_value is not None else set())
        else:
            declared = set(as_label_values(label_values, what=f"label_values of {name!r}"))
            missing = sorted((union | {ignore_value} - {None}) - declared)
            if missing:
                raise ValueError(
                    f"label_values {sorted(declared)} of dataset {name!r} lack the class or "
                    f"ignore value(s) {missing}; add them to label_values"
                )
        self._datasets[name] = DatasetLabels(name, parsed, tuple(sorted(declared)), ignore_value)
        self._lookup_cache.clear()
        logger.debug("Added dataset %r with %d classes", name, len(parsed))

    # -- queries -----------------------------------------------------------------------------

    @property
    def dataset_names(self) -> list[str]:
        """Dataset names in insertion order."""
        return list(self._datasets)

    @property
    def class_names(self) -> list[str]:
        """Output class names ``"<dataset>/<class>"`` in channel order."""
        return [f"{d.name}{SEPARATOR}{c}" for d in self._datasets.values() for c in d.classes]

    @property
    def num_classes(self) -> int:
        """Number of output channels."""
        return sum(len(d.classes) for d in self._datasets.values())

    def dataset(self, name: str) -> DatasetLabels:
        """Return the classes and label values of one dataset.

        Args:
            name: Dataset name.

        Returns:
            The dataset's :class:`DatasetLabels`.

        Raises:
            ValueError: If the dataset is unknown; the message suggests the closest name.

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> registry.dataset("D01").classes
            {'liver': (1, 2)}
        """
        try:
            return self._datasets[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown dataset {name!r}.{suggest_name(str(name), self._datasets)} "
                f"Known datasets: {self.dataset_names}"
            ) from None

    def classes_of(self, dataset_name: str) -> list[str]:
        """Return the full class names ``"<dataset>/<class>"`` of one dataset.

        Args:
            dataset_name: Dataset name.

        Returns:
            The dataset's class names in channel order.

        Raises:
            ValueError: If the dataset is unknown.

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
            >>> registry.classes_of("D01")
            ['D01/liver', 'D01/liver_tumor']
        """
        entry = self.dataset(dataset_name)
        return [f"{entry.name}{SEPARATOR}{c}" for c in entry.classes]

    def label_values_of(self, dataset_name: str) -> tuple[int, ...]:
        """Return the declared label values of one dataset, sorted.

        Args:
            dataset_name: Dataset name.

        Returns:
            The values that may occur in the dataset's label maps.

        Raises:
            ValueError: If the dataset is unknown.

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
            >>> registry.label_values_of("D01")
            (0, 1, 2)
        """
        return self.dataset(dataset_name).label_values

    def channel_slice(self, dataset_name: str) -> slice:
        """Return the output channels of one dataset as a slice.

        Args:
            dataset_name: Dataset name.

        Returns:
            A slice of the channel axis.

        Raises:
            ValueError: If the dataset is unknown.

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> registry.add_dataset("D07", {"liver": [1], "spleen": [2]})
            >>> registry.channel_slice("D07")
            slice(1, 3, None)
        """
        self.dataset(dataset_name)
        start = 0
        for entry in self._datasets.values():
            if entry.name == dataset_name:
                return slice(start, start + len(entry.classes))
            start += len(entry.classes)
        raise AssertionError("unreachable: the dataset was found above")

    def __contains__(self, dataset_name: object) -> bool:
        return dataset_name in self._datasets

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelRegistry):
            return NotImplemented
        return list(self._datasets.items()) == list(other._datasets.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"LabelRegistry({len(self._datasets)} datasets, {self.num_classes} classes: "
            f"{self.dataset_names})"
        )

    # -- encoding -----------------------------------------------------------------------------

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
            ValueError: If the map contains undeclared values; the message names the
                source, the undeclared values and the declared ones.

        Example:
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

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict that keeps dataset and class order.

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> registry.to_dict()["datasets"][0]["classes"]
            [{'name': 'liver', 'values': [1, 2]}]
        """
        datasets = []
        for entry in self._datasets.values():
            item: dict[str, Any] = {
                "name": entry.name,
                "classes": [{"name": c, "values": list(v)} for c, v in entry.classes.items()],
                "label_values": list(entry.label_values),
            }
            if entry.ignore_value is not None:
                item["ignore_value"] = entry.ignore_value
            datasets.append(item)
        return {"format_version": FORMAT_VERSION, "datasets": datasets}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelRegistry:
        """Build a registry from the output of :meth:`to_dict`.

        Args:
            data: A dict with ``format_version`` and ``datasets``.

        Returns:
            A new registry with the same channel order.

        Raises:
            ValueError: If the format version is unsupported or an entry is invalid.

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> LabelRegistry.from_dict(registry.to_dict()) == registry
            True
        """
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported label registry format_version {version!r}; this version of "
                f"partialseg reads format_version {FORMAT_VERSION}"
            )
        registry = cls()
        for item in data["datasets"]:
            registry.add_dataset(
                item["name"],
                {c["name"]: c["values"] for c in item["classes"]},
                label_values=item.get("label_values"),
                ignore_value=item.get("ignore_value"),
            )
        return registry

    def save(self, path: str | Path) -> Path:
        """Write the registry as JSON.

        Args:
            path: Output file.

        Returns:
            The path written.

        Example:
            >>> import tempfile, pathlib
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     path = registry.save(pathlib.Path(folder) / "labels.json")
            ...     LabelRegistry.load(path) == registry
            True
        """
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LabelRegistry:
        """Read a registry written by :meth:`save`.

        Args:
            path: JSON file.

        Returns:
            The registry.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If the file is not a valid registry.

        Example:
            >>> import tempfile, pathlib
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     path = registry.save(pathlib.Path(folder) / "labels.json")
            ...     LabelRegistry.load(path).class_names
            ['D01/liver']
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label registry file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        return cls.from_dict(data)

    @classmethod
    def from_dataset_json(
        cls, path_or_dict: str | Path | Mapping[str, Any], *, dataset_name: str | None = None
    ) -> LabelRegistry:
        """Build a one-dataset registry from an nnU-Net v2 ``dataset.json``.

        See :func:`partialseg.labels.readers.read_dataset_json` for the rules.

        Example:
            >>> info = {"labels": {"background": 0, "liver": [1, 2], "tumor": 2}}
            >>> LabelRegistry.from_dataset_json(info, dataset_name="D03").class_names
            ['D03/liver', 'D03/tumor']
        """
        from partialseg.labels.readers import read_dataset_json

        name, classes, label_values, ignore_value = read_dataset_json(
            path_or_dict, dataset_name=dataset_name
        )
        registry = cls()
        registry.add_dataset(name, classes, label_values=label_values, ignore_value=ignore_value)
        return registry
