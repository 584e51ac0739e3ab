"""Readers that turn dataset descriptions on disk into label definitions."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["read_dataset_json", "scan_mask_folder", "validate_mask_files"]

BACKGROUND_NAME = "background"
IGNORE_NAME = "ignore"


def read_dataset_json(
    path_or_dict: str | Path | Mapping[str, Any], *, dataset_name: str | None = None
) -> tuple[str, dict[str, list[int]], list[int], int | None]:
    """Read the classes of an nnU-Net v2 ``dataset.json``.

    Every entry of ``labels`` except "background" becomes a class. A plain int is
    one label value. A list such as ``"liver": [1, 2]`` is a region covering
    several values, which is how nnU-Net v2 declares nested classes. An "ignore"
    entry marks unlabelled voxels, so it becomes the dataset's ignore value, not
    a class. nnU-Net v1 files, whose ``labels`` map value strings to names
    (``{"1": "liver"}``), are read as well. The declared label values are 0,
    every class value and the ignore value.

    Args:
        path_or_dict: Path of a ``dataset.json``, the folder that contains it, or
            its parsed content.
        dataset_name: Dataset name. Defaults to the name of the folder that
            contains the ``dataset.json``. Required when a dict is given.

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
    if _is_nnunet_v1_labels(labels):
        labels = {name: int(value) for value, name in labels.items()}

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


def _is_nnunet_v1_labels(labels: Mapping[str, Any]) -> bool:
    """Return whether ``labels`` maps value strings to names, as nnU-Net v1 does."""
    return all(
        isinstance(key, str) and key.isdigit() and isinstance(value, str)
        for key, value in labels.items()
    )


def scan_mask_folder(
    path: str | Path, *, file_ending: str = ".nii.gz"
) -> dict[str, dict[str, Path]]:
    """Find the per-class mask files of a folder laid out as ``<case>/segmentations/<class>``.

    This is the layout of the TotalSegmentator dataset: every case folder has a
    ``segmentations`` folder with one binary mask file per class. A class whose
    file is missing in a case is not annotated in that case.

    Args:
        path: The folder that contains the case folders.
        file_ending: Extension of the mask files.

    Returns:
        Case name to class name to mask file, both sorted by name. Folders without
        a ``segmentations`` folder are not cases and are left out.

    Raises:
        FileNotFoundError: If ``path`` does not exist or contains no case folder.

    Example:
        >>> import pathlib, tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     masks = pathlib.Path(root, "s0001", "segmentations")
        ...     masks.mkdir(parents=True)
        ...     _ = (masks / "liver.nii.gz").write_bytes(b"")
        ...     {case: list(files) for case, files in scan_mask_folder(root).items()}
        {'s0001': ['liver']}
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"mask folder not found: {root}")
    cases: dict[str, dict[str, Path]] = {}
    for case_folder in sorted(p for p in root.iterdir() if p.is_dir()):
        mask_folder = case_folder / "segmentations"
        if not mask_folder.is_dir():
            continue
        files = sorted(f for f in mask_folder.iterdir() if f.name.endswith(file_ending))
        cases[case_folder.name] = {f.name[: -len(file_ending)]: f for f in files}
        if not files:
            logger.warning(
                "Case %s has no %s mask files in %s", case_folder.name, file_ending, mask_folder
            )
    if not cases:
        raise FileNotFoundError(
            f"no case folder with a 'segmentations' subfolder found in {root}; expected "
            f"<case>/segmentations/<class>{file_ending}"
        )
    return cases


def validate_mask_files(files: Mapping[str, Path]) -> None:
    """Check that one case's mask files are binary and share one image grid.

    Every file is read with SimpleITK.

    Args:
        files: Class name to mask file, for one case.

    Raises:
        ValueError: If a mask has values other than 0 and 1, or its size, spacing,
            origin or direction differs from the first mask of the case.

    Example:
        >>> import pathlib, tempfile
        >>> import numpy as np, SimpleITK as sitk
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder, "liver.nii.gz")
        ...     sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 2, 2), 2, np.uint8)), str(path))
        ...     validate_mask_files({"liver": path})
        Traceback (most recent call last):
        ...
        ValueError: ...liver.nii.gz: mask of class 'liver' must contain only 0 and 1, got values [2]
    """
    import numpy as np
    import SimpleITK as sitk

    reference = None
    for class_name, file in files.items():
        image = sitk.ReadImage(str(file))
        grid = (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        if reference is None:
            reference = (file, grid)
        elif not _same_grid(grid, reference[1]):
            raise ValueError(
                f"{file}: mask of class {class_name!r} has size, spacing, origin or direction "
                f"{grid}, but {reference[0].name} of the same case has {reference[1]}; "
                "resample the masks of a case onto one grid"
            )
        values = np.unique(sitk.GetArrayViewFromImage(image))
        if not set(values.tolist()) <= {0, 1}:
            raise ValueError(
                f"{file}: mask of class {class_name!r} must contain only 0 and 1, got values "
                f"{values.tolist()[:10]}"
            )


def _same_grid(first: tuple, second: tuple, tolerance: float = 1e-5) -> bool:
    if first[0] != second[0]:
        return False
    pairs = zip(first[1] + first[2] + first[3], second[1] + second[2] + second[3], strict=True)
    return all(abs(a - b) <= tolerance * max(1.0, abs(a), abs(b)) for a, b in pairs)
