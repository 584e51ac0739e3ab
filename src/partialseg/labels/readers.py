"""Readers that turn dataset descriptions on disk into label definitions."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BACKGROUND_NAME = "background"
IGNORE_NAME = "ignore"


def read_dataset_json(
    path_or_dict: str | Path | Mapping[str, Any], *, dataset_name: str | None = None
) -> tuple[str, dict[str, list[int]], list[int], int | None]:
    """Read the classes of an nnU-Net v2 ``dataset.json``.

    Every entry of ``labels`` except "background" becomes a class. A plain int is
    one label value, and a list such as ``"liver": [1, 2]`` is a region covering
    several values, which is how nnU-Net v2 declares nested classes. An "ignore"
    entry marks unlabelled voxels: it becomes the dataset's ignore value, not a
    class. The declared label values are 0, every class value and the ignore value.

    Args:
        path_or_dict: Path of a ``dataset.json``, the folder that contains it, or
            its parsed content.
        dataset_name: Dataset name. Defaults to the name of the folder that
            contains the ``dataset.json``; required when a dict is given.

    Returns:
        The dataset name, the classes (name to label values, in file order), the
        declared label values and the ignore value (None if there is none).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If ``labels`` is missing or malformed, or no name is known.

    Example:
        >>> info = {"labels": {"background": 0, "liver": [1, 2], "tumor": 2, "ignore": 3}}
        >>> read_dataset_json(info, dataset_name="Dataset003_Liver")
        ('Dataset003_Liver', {'liver': [1, 2], 'tumor': [2]}, [0, 1, 2, 3], 3)
    """
    if isinstance(path_or_dict, Mapping):
        content, source = path_or_dict, "dataset.json content"
        if dataset_name is None:
            raise ValueError(
                "dataset_name is required when the dataset.json content is given as a dict"
            )
    else:
        path = Path(path_or_dict)
        if path.is_dir():
            path = path / "dataset.json"
        if not path.is_file():
            raise FileNotFoundError(f"dataset.json not found: {path}")
        content = json.loads(path.read_text(encoding="utf-8"))
        source = str(path)
        dataset_name = dataset_name or path.resolve().parent.name
    labels = content.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"{source} has no 'labels' mapping of label name to value(s)")

    classes: dict[str, list[int]] = {}
    ignore_value = None
    for name, value in labels.items():
        values = [value] if isinstance(value, int) else value
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, int) for v in values):
            raise ValueError(
                f"{source}: label {name!r} must be an int or a list of ints, got {value!r}"
            )
        if name == BACKGROUND_NAME:
            if list(values) != [0]:
                raise ValueError(f"{source}: 'background' must be 0, got {value!r}")
        elif name == IGNORE_NAME:
            if len(values) != 1:
                raise ValueError(f"{source}: 'ignore' must be a single int, got {value!r}")
            ignore_value = values[0]
        else:
            classes[name] = sorted(set(values))
    declared = {0}.union(*classes.values())
    if ignore_value is not None:
        declared.add(ignore_value)
    logger.debug("Read %d classes of dataset %r from %s", len(classes), dataset_name, source)
    return dataset_name, classes, sorted(declared), ignore_value
