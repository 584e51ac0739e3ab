"""Sliding-window start positions and separable, pre-normalised Gaussian weights."""

from __future__ import annotations

import math

import numpy as np

SIGMA_SCALE = 1.0 / 8.0


def window_starts(size: int, patch: int, step_size: float) -> list[int]:
    """Return evenly spaced window starts that cover ``size`` voxels.

    Neighbouring windows are at most ``patch * step_size`` voxels apart, and the
    first and last windows touch the two ends of the axis.

    Args:
        size: Length of the (padded) axis; at least ``patch``.
        patch: Window length along the axis.
        step_size: Maximum distance between starts as a fraction of ``patch``.

    Returns:
        Sorted start indices.

    Example:
        >>> window_starts(160, 96, 0.5)
        [0, 32, 64]
        >>> window_starts(96, 96, 0.5)
        [0]
    """
    if size < patch:
        raise ValueError(f"axis length {size} is shorter than the patch length {patch}; pad first")
    if size == patch:
        return [0]
    span = size - patch
    count = math.ceil(span / (patch * step_size)) + 1
    return [int(i * span / (count - 1) + 0.5) for i in range(count)]


def gaussian_profile(patch: int, *, sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """Return a 1D Gaussian over ``patch`` voxels with sigma ``patch * sigma_scale``, peak 1.

    Example:
        >>> profile = gaussian_profile(8)
        >>> round(float(profile.max()), 6), round(float(profile[0]), 6)
        (1.0, 0.002479)
    """
    centre = (patch - 1) / 2.0
    sigma = patch * sigma_scale
    profile = np.exp(-0.5 * ((np.arange(patch) - centre) / sigma) ** 2)
    return profile / profile.max()


def normalized_axis_weights(
    size: int, patch: int, starts: list[int], *, gaussian: bool
) -> dict[int, np.ndarray]:
    """Return each window's weights along one axis, divided by the sum over all windows.

    The window grid is the Cartesian product of the starts of the three axes and
    the 3D weight is the product of three 1D profiles. So the sum of the 3D
    weights of all windows covering a voxel is the product of three 1D sums, and
    multiplying the three normalised 1D weights gives 3D weights that add up to
    exactly 1 at every voxel. No weight-sum volume has to be kept.

    Args:
        size: Length of the axis.
        patch: Window length along the axis.
        starts: Window starts from :func:`window_starts`.
        gaussian: Use the Gaussian profile; otherwise every voxel weighs 1.

    Returns:
        A float64 array of length ``patch`` per start.

    Example:
        >>> weights = normalized_axis_weights(6, 4, [0, 2], gaussian=False)
        >>> weights[0].tolist(), weights[2].tolist()
        ([1.0, 1.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0])
    """
    profile = gaussian_profile(patch) if gaussian else np.ones(patch)
    total = np.zeros(size)
    for start in starts:
        total[start : start + patch] += profile
    return {start: profile / total[start : start + patch] for start in starts}
