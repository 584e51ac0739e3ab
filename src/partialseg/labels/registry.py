"""Label registry: the classes of every dataset and their output channels."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from partialseg.labels._dataset import (
    SEPARATOR,
    DatasetLabels,
    as_label_values,
    check_name,
    dataset_definition,
    describe_dataset,
    suggest_name,
)
from partialseg.labels._encoding import EncodingMixin
from partialseg.labels._serialization import SerializationMixin

logger = logging.getLogger(__name__)


class LabelRegistry(EncodingMixin, SerializationMixin):
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
        """Add a dataset and its classes, each class as a new output channel.

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
        check_name(name, field="dataset name")
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
            check_name(class_name, field=f"class name in dataset {name!r}")
            parsed[class_name] = as_label_values(
                values, field=f"values of class {name}/{class_name}"
            )
            if 0 in parsed[class_name]:
                raise ValueError(
                    f"class {name}/{class_name} covers label value 0, which is background; "
                    "remove 0 from its values"
                )
        union = set().union(*parsed.values())
        if ignore_value is not None:
            (ignore_value,) = as_label_values(ignore_value, field=f"ignore_value of {name!r}")
            if ignore_value in union:
                raise ValueError(
                    f"ignore_value {ignore_value} of dataset {name!r} belongs to a class; "
                    "an ignored value must not be part of any class"
                )
        if label_values is None:
            declared = {0} | union | ({ignore_value} if ignore_value is not None else set())
        else:
            declared = set(as_label_values(label_values, field=f"label_values of {name!r}"))
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
            ValueError: If the dataset is unknown. The message suggests the closest name.

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

    def resolve(self, name: str) -> str:
        """Return the full class name for a full or an unambiguous bare class name.

        Args:
            name: ``"<dataset>/<class>"``, or a bare class name that exactly one
                dataset uses.

        Returns:
            The full class name ``"<dataset>/<class>"``.

        Raises:
            ValueError: If the name is unknown (the message suggests the closest
                name) or a bare name belongs to several datasets (the message lists
                them).

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
            >>> registry.add_dataset("D07", {"liver": [1], "spleen": [2]})
            >>> registry.resolve("spleen")
            'D07/spleen'
            >>> registry.resolve("D01/liver")
            'D01/liver'
            >>> registry.resolve("liver")
            Traceback (most recent call last):
            ...
            ValueError: class name 'liver' is ambiguous: it matches ['D01/liver', 'D07/liver']...
        """
        if not isinstance(name, str):
            raise TypeError(f"class name must be a str, got {type(name).__name__} {name!r}")
        if SEPARATOR in name:
            dataset_name, class_name = name.split(SEPARATOR, 1)
            classes = self.dataset(dataset_name).classes
            if class_name not in classes:
                raise ValueError(
                    f"dataset {dataset_name!r} has no class {class_name!r}."
                    f"{suggest_name(class_name, classes)} Its classes: {list(classes)}"
                )
            return name
        matches = [
            f"{entry.name}{SEPARATOR}{name}"
            for entry in self._datasets.values()
            if name in entry.classes
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(
                f"class name {name!r} is ambiguous: it matches {matches}; "
                "use the full name '<dataset>/<class>'"
            )
        bare_names = {c for entry in self._datasets.values() for c in entry.classes}
        raise ValueError(
            f"unknown class {name!r}.{suggest_name(name, [*bare_names, *self.class_names])}"
        )

    def channel_index(self, name: str) -> int:
        """Return the output channel of a class.

        Args:
            name: A full or an unambiguous bare class name, see :meth:`resolve`.

        Returns:
            The channel index.

        Raises:
            ValueError: If the name is unknown or ambiguous.

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
            >>> registry.channel_index("liver_tumor")
            1
        """
        return self.class_names.index(self.resolve(name))

    def shared_class_names(self) -> dict[str, list[str]]:
        """Report the bare class names that more than one dataset uses.

        These classes stay separate outputs because their annotation protocols may
        differ. The report helps to decide whether to compare or merge them later.
        Names are compared exactly, including case.

        Returns:
            Bare class name to the full names that use it, in channel order.

        Example:
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
            >>> registry.add_dataset("D07", {"liver": [1], "spleen": [2]})
            >>> registry.shared_class_names()
            {'liver': ['D01/liver', 'D07/liver']}
        """
        users: dict[str, list[str]] = {}
        for full_name in self.class_names:
            users.setdefault(full_name.split(SEPARATOR, 1)[1], []).append(full_name)
        return {name: full_names for name, full_names in users.items() if len(full_names) > 1}

    def merge(self, other: LabelRegistry) -> LabelRegistry:
        """Return a registry with the datasets of both registries.

        The datasets of ``self`` keep their channels, and the datasets that only
        ``other`` has follow in ``other``'s order, so a model trained with ``self``
        keeps its channel indices when datasets are added. A dataset in both
        registries must have the same definition, including the order of its
        classes, and appears once.

        Args:
            other: The registry to add.

        Returns:
            A new registry. Neither input changes.

        Raises:
            ValueError: If a dataset is defined differently in the two registries.

        Example:
            >>> first = LabelRegistry()
            >>> first.add_dataset("D01", {"liver": [1, 2]})
            >>> second = LabelRegistry()
            >>> second.add_dataset("D01", {"liver": [1, 2]})
            >>> second.add_dataset("D09", {"spleen": [1]})
            >>> first.merge(second).class_names
            ['D01/liver', 'D09/spleen']
        """
        if not isinstance(other, LabelRegistry):
            raise TypeError(f"can only merge a LabelRegistry, got {type(other).__name__}")
        merged = LabelRegistry()
        merged._datasets = dict(self._datasets)
        for name, entry in other._datasets.items():
            existing = merged._datasets.get(name)
            if existing is None:
                merged._datasets[name] = entry
            elif dataset_definition(existing) != dataset_definition(entry):
                raise ValueError(
                    f"dataset {name!r} is defined differently in the two registries: "
                    f"{describe_dataset(existing)} versus {describe_dataset(entry)}. "
                    "Rename one of them"
                )
        return merged

    def __contains__(self, dataset_name: object) -> bool:
        return dataset_name in self._datasets

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelRegistry):
            return NotImplemented
        # Class order is part of the definition because it fixes the channels.
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"LabelRegistry({len(self._datasets)} datasets, {self.num_classes} classes: "
            f"{self.dataset_names})"
        )
