"""Per-dataset label definitions and name checks shared by the label modules."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any

import numpy as np

SEPARATOR = "/"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DatasetLabels:
    """The classes and label values of one dataset.

    Attributes:
        name: Dataset name, unique within a registry.
        classes: Class name (without the dataset prefix) to the sorted label values
            the class covers, in declaration order.
        label_values: Every label value that may occur in the dataset's label maps,
            sorted. Values that belong to no class encode as negative for every class.
        ignore_value: Label value marking unlabelled voxels, or None. Such voxels
            belong to no class and are excluded from the loss.

    Example:
        >>> from partialseg.labels import LabelRegistry
        >>> registry = LabelRegistry()
        >>> registry.add_dataset("D03", {"liver": [1, 2], "tumor": [2]}, ignore_value=3)
        >>> labels = registry.dataset("D03")
        >>> labels.classes, labels.label_values, labels.ignore_value
        ({'liver': (1, 2), 'tumor': (2,)}, (0, 1, 2, 3), 3)
    """

    name: str
    classes: dict[str, tuple[int, ...]]
    label_values: tuple[int, ...]
    ignore_value: int | None = None


def suggest_name(name: str, choices: Iterable[str]) -> str:
    """Return a " Did you mean ...?" hint for ``name``, or an empty string.

    Args:
        name: The name that was not found.
        choices: The valid names.

    Returns:
        The hint sentence with a leading space, or "" when nothing is close. The
        comparison ignores case.

    Example:
        >>> suggest_name("lvier", ["liver", "spleen"])
        " Did you mean 'liver'?"
    """
    by_lower = {choice.lower(): choice for choice in choices}
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" Did you mean {by_lower[matches[0]]!r}?" if matches else ""


def as_label_values(values: Any, *, field: str) -> tuple[int, ...]:
    """Convert an int or a sequence of ints into sorted unique label values."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{field} must be an int or a sequence of ints, got {values!r}")
    result = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{field} must contain only ints, got {value!r} in {values!r}")
        if value < 0:
            raise ValueError(
                f"{field} must be non-negative label values, got {value} in {values!r}"
            )
        result.append(int(value))
    if not result:
        raise ValueError(f"{field} must contain at least one label value, got {values!r}")
    return tuple(sorted(set(result)))


def check_name(name: Any, *, field: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{field} must be a str, got {type(name).__name__} {name!r}")
    if not name or SEPARATOR in name:
        raise ValueError(f"{field} must be a non-empty string without {SEPARATOR!r}, got {name!r}")
    return name


def dataset_definition(entry: DatasetLabels) -> tuple:
    """Return what defines a dataset's channels, with the class order."""
    return (list(entry.classes.items()), entry.label_values, entry.ignore_value)


def describe_dataset(entry: DatasetLabels) -> str:
    text = f"classes {dict(entry.classes)}, label values {list(entry.label_values)}"
    if entry.ignore_value is not None:
        text += f", ignore value {entry.ignore_value}"
    return text
