"""Resampling to a target spacing and CT intensity normalisation."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Preprocessing:
    """Spacing, patch size and CT normalisation shared by training and prediction.

    All spatial tuples are in array order (z, y, x), as in nnU-Net plans;
    SimpleITK reports spacing in (x, y, z) order, so convert with ``[::-1]``.

    Attributes:
        spacing: Target voxel spacing in mm, (z, y, x).
        patch_size: Network input patch size in voxels, (z, y, x).
        ct_clip: Lower and upper Hounsfield unit bounds applied before z-scoring.
        ct_mean: Mean of the clipped foreground intensities of the training data.
        ct_std: Standard deviation of the same intensities.

    Example:
        >>> import numpy as np
        >>> prep = Preprocessing(spacing=(1.5, 1.0, 1.0), patch_size=(96, 192, 192),
        ...                      ct_clip=(-927.0, 275.0), ct_mean=63.437, ct_std=175.481)
        >>> values = prep.normalize(np.array([-2000.0, 63.437, 1000.0]))
        >>> [round(float(v), 3) for v in values]
        [-5.644, 0.0, 1.206]
    """

    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    ct_clip: tuple[float, float]
    ct_mean: float
    ct_std: float

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.ct_clip = (float(self.ct_clip[0]), float(self.ct_clip[1]))
        self.ct_mean = float(self.ct_mean)
        self.ct_std = float(self.ct_std)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive values (z, y, x), got {self.spacing}")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(
                f"patch_size must be three positive integers (z, y, x), got {self.patch_size}"
            )
        if not self.ct_clip[0] < self.ct_clip[1]:
            raise ValueError(
                f"ct_clip must be (lower, upper) with lower < upper, got {self.ct_clip}"
            )
        if not self.ct_std > 0:
            raise ValueError(f"ct_std must be positive, got {self.ct_std}")

    def normalize(self, array: np.ndarray) -> np.ndarray:
        """Clip to ``ct_clip`` and z-score with ``ct_mean`` and ``ct_std``.

        Args:
            array: CT intensities in Hounsfield units.

        Returns:
            A float32 array of the same shape.
        """
        clipped = np.clip(np.asarray(array, dtype=np.float32), *self.ct_clip)
        return (clipped - np.float32(self.ct_mean)) / np.float32(self.ct_std)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "spacing": list(self.spacing),
            "patch_size": list(self.patch_size),
            "ct_clip": list(self.ct_clip),
            "ct_mean": self.ct_mean,
            "ct_std": self.ct_std,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Build from the output of :meth:`to_dict`."""
        expected = {field.name for field in dataclasses.fields(cls)}
        missing = expected - set(data)
        if missing:
            raise ValueError(f"preprocessing config is missing {sorted(missing)}")
        return cls(**{key: data[key] for key in expected})


def resample_image(
    image: sitk.Image,
    spacing_zyx: Sequence[float],
    *,
    is_label: bool = False,
) -> sitk.Image:
    """Resample ``image`` to ``spacing_zyx`` keeping its origin, direction and extent.

    Args:
        image: A 3D SimpleITK image.
        spacing_zyx: Target spacing in mm, array order (z, y, x).
        is_label: Use nearest-neighbour interpolation (label maps) instead of
            linear interpolation.

    Returns:
        The resampled image. The new size covers the same physical extent.

    Example:
        >>> img = sitk.Image([10, 10, 4], sitk.sitkFloat32)
        >>> img.SetSpacing((1.0, 1.0, 3.0))
        >>> resample_image(img, (1.5, 2.0, 2.0)).GetSize()
        (5, 5, 8)
    """
    spacing_xyz = [float(s) for s in reversed(tuple(spacing_zyx))]
    old_size = image.GetSize()
    old_spacing = image.GetSpacing()
    new_size = [
        max(1, round(size * old / new))
        for size, old, new in zip(old_size, old_spacing, spacing_xyz, strict=True)
    ]
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        spacing_xyz,
        image.GetDirection(),
        0,
        image.GetPixelID(),
    )
