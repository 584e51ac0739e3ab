"""Tiny NIfTI volumes with a fixed geometry for the conversion tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING = (0.8, 0.8, 2.5)
ORIGIN = (-10.0, 5.0, 30.0)


def write_volume(path: Path, array: np.ndarray, *, spacing=SPACING, origin=ORIGIN) -> Path:
    """Write a (z, y, x) array as an image with a fixed, non-trivial geometry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def ct_array(seed: int = 0) -> np.ndarray:
    """A 4 x 6 x 5 int16 CT-like array."""
    return np.random.default_rng(seed).integers(-1000, 1000, (4, 6, 5)).astype(np.int16)


def label_array(values: list[int]) -> np.ndarray:
    """A 4 x 6 x 5 uint8 label map holding each value in ``values`` in one block of voxels."""
    label = np.zeros((4, 6, 5), np.uint8)
    for index, value in enumerate(values):
        label[index % 4, index // 4, :2] = value
    return label


def write_pair(image: Path, label: Path, values: list[int], seed: int = 0) -> None:
    """Write a CT image and its label map on the same grid."""
    write_volume(image, ct_array(seed))
    write_volume(label, label_array(values))
