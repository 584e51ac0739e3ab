"""Reader for datasets in the nnU-Net raw layout (``dataset.json``, ``imagesTr``, ``labelsTr``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Case:
    """One training case: a CT image and its label map.

    Attributes:
        name: Case identifier (the file name without channel suffix and extension).
        dataset: Name of the dataset the case belongs to.
        image_path: Path of the CT image.
        label_path: Path of the integer label map on the same grid, or None for
            an unlabelled case.
    """

    name: str
    dataset: str
    image_path: Path
    label_path: Path | None


@dataclasses.dataclass
class RawDataset:
    """A dataset in nnU-Net raw layout.

    Attributes:
        name: Dataset name (the folder name unless ``dataset.json`` says otherwise).
        root: Dataset folder.
        labels: The ``labels`` entry of ``dataset.json``: class name to a label value
            or a list of label values (a region).
        cases: Training cases, sorted by name.
        metadata: The whole ``dataset.json``.
    """

    name: str
    root: Path
    labels: dict[str, Any]
    cases: list[Case]
    metadata: dict[str, Any]


def read_raw_dataset(path: str | os.PathLike[str], *, name: str | None = None) -> RawDataset:
    """Read a dataset folder in nnU-Net raw layout.

    Only single-channel (CT) datasets are supported: every case needs
    ``imagesTr/<case>_0000<ending>`` and ``labelsTr/<case><ending>``.

    Args:
        path: Dataset folder holding ``dataset.json``, ``imagesTr`` and ``labelsTr``.
        name: Dataset name; defaults to the folder name.

    Returns:
        The dataset with its cases.

    Raises:
        FileNotFoundError: The folder, ``dataset.json`` or a case's label map is missing.
        ValueError: ``dataset.json`` is invalid, declares more than one channel, or
            the dataset has no cases.

    Example:
        >>> import pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp()) / "Dataset001_Demo"
        >>> (root / "imagesTr").mkdir(parents=True)
        >>> _ = (root / "dataset.json").write_text('{"labels": {"background": 0, "liver": 1}}')
        >>> read_raw_dataset(root)
        Traceback (most recent call last):
        ...
        ValueError: dataset ... has no training cases: ... ending in '_0000.nii.gz'
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    metadata = _read_dataset_json(root / "dataset.json")
    ending = metadata.get("file_ending", ".nii.gz")
    channels = metadata.get("channel_names", metadata.get("modality", {"0": "CT"}))
    if len(channels) != 1:
        raise ValueError(
            f"{root / 'dataset.json'} declares {len(channels)} input channels {channels}; "
            "partialseg trains on single-channel CT"
        )
    dataset_name = name or root.name
    cases = _find_cases(root, dataset_name, ending)
    logger.info("read dataset %s: %d cases", dataset_name, len(cases))
    return RawDataset(dataset_name, root, dict(metadata["labels"]), cases, metadata)


def _read_dataset_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset.json not found: {path}; an nnU-Net raw dataset folder needs one"
        )
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path} has no 'labels' mapping of class names to label values")
    return metadata


def _find_cases(root: Path, dataset_name: str, ending: str) -> list[Case]:
    images_dir = root / "imagesTr"
    labels_dir = root / "labelsTr"
    channel_suffix = f"_0000{ending}"
    images = sorted(images_dir.glob(f"*{channel_suffix}")) if images_dir.is_dir() else []
    if not images:
        raise ValueError(
            f"dataset {root} has no training cases: {images_dir} holds no files ending in "
            f"'{channel_suffix}'"
        )
    cases = []
    for image_path in images:
        case_name = image_path.name[: -len(channel_suffix)]
        label_path = labels_dir / f"{case_name}{ending}"
        if not label_path.is_file():
            raise FileNotFoundError(
                f"label map missing for case {case_name!r} of dataset {dataset_name}: expected "
                f"{label_path}; add it or remove {image_path.name} from imagesTr"
            )
        cases.append(Case(case_name, dataset_name, image_path, label_path))
    _warn_about_unused_files(images_dir, labels_dir, {case.name for case in cases}, ending)
    return cases


def _warn_about_unused_files(
    images_dir: Path, labels_dir: Path, case_names: set[str], ending: str
) -> None:
    """Log the image and label files that no single-channel case reads."""
    other_channels = sorted(
        path.name
        for path in images_dir.glob(f"*{ending}")
        if not path.name.endswith(f"_0000{ending}")
    )
    if other_channels:
        logger.warning(
            "%s contains %d files that are not channel 0000 (%s); they are ignored, because "
            "partialseg trains on single-channel CT",
            images_dir,
            len(other_channels),
            ", ".join(other_channels[:3]),
        )
    unmatched = sorted(
        path.name
        for path in labels_dir.glob(f"*{ending}")
        if path.name[: -len(ending)] not in case_names
    )
    if unmatched:
        logger.warning(
            "%s contains %d label maps without an image in imagesTr (%s); they are ignored",
            labels_dir,
            len(unmatched),
            ", ".join(unmatched[:3]),
        )
