"""Turning prediction inputs (files, folders, DICOM series, arrays) into checked 3D images."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from partialseg.data.io import IMAGE_SUFFIXES, image_stem, read_image

logger = logging.getLogger(__name__)

__all__ = ["Case", "ImageInput", "list_cases", "load_image"]

ImageInput = str | os.PathLike | sitk.Image | np.ndarray
"""A path (image file or DICOM series folder), a SimpleITK image or a (z, y, x) array."""

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def load_image(image: ImageInput, *, spacing: Sequence[float] | None = None) -> sitk.Image:
    """Return ``image`` as a checked single-channel 3D SimpleITK image.

    Args:
        image: A NIfTI, NRRD or MHA file, a folder with one DICOM series, a
            SimpleITK image, or a numpy array in (z, y, x) order.
        spacing: Voxel spacing (z, y, x) in mm; required for arrays and rejected
            for other inputs, which carry their own geometry. An array gets
            origin 0 and the identity direction.

    Returns:
        The image. Files are read as stored; SimpleITK images are returned unchanged.

    Raises:
        FileNotFoundError: If a path does not exist.
        partialseg.data.io.ImageReadError: If a file cannot be read or is not 3D.
        ValueError: If the image is not 3D, has several components per voxel,
            contains NaN or infinite values, or ``spacing`` is missing, invalid
            or not applicable.
        TypeError: If ``image`` has an unsupported type.

    Example:
        >>> image = load_image(np.zeros((4, 5, 6), np.int16), spacing=(3.0, 1.0, 1.0))
        >>> image.GetSize(), image.GetSpacing()
        ((6, 5, 4), (1.0, 1.0, 3.0))
    """
    if not isinstance(image, (np.ndarray, sitk.Image, str, os.PathLike)):
        raise TypeError(
            "image must be a path, a SimpleITK image or a numpy array, "
            f"got {type(image).__name__}; convert a torch tensor with tensor.numpy()"
        )
    if isinstance(image, np.ndarray):
        result = _image_from_array(image, spacing)
        name = "the array"
    else:
        if spacing is not None:
            raise ValueError(
                f"spacing={tuple(spacing)} applies to numpy arrays only; a path or SimpleITK "
                "image carries its own spacing, so omit spacing"
            )
        if isinstance(image, sitk.Image):
            result = image
            name = "the SimpleITK image"
        else:
            result = read_image(image)
            name = str(image)
    check_image(result, name=name)
    return result


def check_image(image: sitk.Image, *, name: str = "image") -> None:
    """Raise a ValueError unless ``image`` is a single-channel 3D image of finite values.

    Args:
        image: The image to check.
        name: How to refer to the image in error messages.
    """
    if image.GetDimension() != 3:
        raise ValueError(
            f"{name} must be a 3D image, got a {image.GetDimension()}D image of size "
            f"{image.GetSize()}; pass a single 3D CT volume"
        )
    if 0 in image.GetSize():
        raise ValueError(
            f"{name} is empty: its size (x, y, z) is {image.GetSize()}; pass a volume with "
            "at least one voxel along every axis"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{name} must have one value per voxel, got "
            f"{image.GetNumberOfComponentsPerPixel()} components; pass a single-channel CT"
        )
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        values = sitk.GetArrayViewFromImage(image)
        nan_count = int(np.isnan(values).sum())
        infinite_count = int(np.isinf(values).sum())
        if nan_count or infinite_count:
            raise ValueError(
                f"{name} contains {nan_count} NaN and {infinite_count} infinite voxels; "
                "replace them (for example with -1024 HU, air) before prediction"
            )


def _image_from_array(array: np.ndarray, spacing: Sequence[float] | None) -> sitk.Image:
    if array.ndim != 3:
        raise ValueError(
            f"the array must be 3D (z, y, x), got shape {array.shape}; pass a single 3D volume"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"the array must hold integers or floats, got dtype {array.dtype}")
    if spacing is None:
        raise ValueError("a numpy array has no geometry; pass spacing=(z, y, x) in mm")
    values = [float(s) for s in spacing]
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be three positive values (z, y, x) in mm, got {spacing}")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(values[::-1])
    return image


@dataclasses.dataclass(frozen=True)
class Case:
    """One image to predict.

    Attributes:
        name: Case name, used as the output folder name.
        path: The image file or DICOM series folder.
    """

    name: str
    path: Path


def list_cases(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Case]:
    """Find the images to predict in files and folders.

    Each input is an image file, a folder with one DICOM series (one case named
    after the folder), or a folder of image files and DICOM series sub-folders
    (one case each). Files named like nnU-Net's ``imagesTs`` (``<case>_0000.nii.gz``)
    give the case ``<case>``. In a folder where every file has such a channel
    number, numbers other than 0000 are rejected because the networks take one
    CT channel.

    Args:
        inputs: One path or a sequence of paths.

    Returns:
        The cases, sorted by name within each folder.

    Raises:
        FileNotFoundError: If a path does not exist.
        ValueError: If a folder contains no images, an nnU-Net folder has a
            channel other than 0000, or two cases get the same name.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ["lung_003_0000.nii.gz", "lung_001_0000.nii.gz"]:
        ...     (folder / name).touch()
        >>> [case.name for case in list_cases(folder)]
        ['lung_001', 'lung_003']
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    cases: list[Case] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.is_file():
            cases.append(Case(_case_name(path), path))
        elif _has_dicom_series(path):
            cases.append(Case(path.name, path))
        else:
            cases.extend(_cases_in_folder(path))
    seen: dict[str, Path] = {}
    for case in cases:
        if case.name in seen:
            raise ValueError(
                f"two inputs give the case name {case.name!r}: {seen[case.name]} and "
                f"{case.path}; rename one of them"
            )
        seen[case.name] = case.path
    return cases


def _cases_in_folder(folder: Path) -> list[Case]:
    files, cases = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.endswith(IMAGE_SUFFIXES):
            files.append(entry)
        elif entry.is_dir() and _has_dicom_series(entry):
            cases.append(Case(entry.name, entry))
    channels = [_CHANNEL_SUFFIX.match(image_stem(path)) for path in files]
    if files and all(channels):
        # Every file is named <case>_<4 digits>: nnU-Net's imagesTs layout.
        for path, match in zip(files, channels, strict=True):
            if match["channel"] != "0000":
                raise ValueError(
                    f"{path.name} is channel {match['channel']} of case {match['case']!r}, but "
                    "the networks take one CT channel (_0000); remove the other channels"
                )
            cases.append(Case(match["case"], path))
    else:
        cases.extend(Case(_case_name(path), path) for path in files)
    if not cases:
        raise ValueError(
            f"no images found in {folder}; expected files ending in {', '.join(IMAGE_SUFFIXES)} "
            "or DICOM series folders"
        )
    return sorted(cases, key=lambda case: case.name)


def _case_name(path: Path) -> str:
    stem = image_stem(path)
    match = _CHANNEL_SUFFIX.match(stem)
    return match["case"] if match is not None and match["channel"] == "0000" else stem


def _has_dicom_series(folder: Path) -> bool:
    # GDCM prints a warning for every folder without a series, which is no error here.
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
