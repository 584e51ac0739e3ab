"""Derivation of U-Net strides and kernel sizes from a patch size and voxel spacing."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Topology", "plan_topology"]


@dataclasses.dataclass
class Topology:
    """Network topology derived from a patch size and voxel spacing.

    Attributes:
        patch_size: The patch size, rounded up to be divisible by the strides.
        strides: Stride of each stage, per axis; the first stage has stride 1.
        kernel_sizes: Kernel size of each stage, per axis.
        features_per_stage: Feature channels of each stage.
    """

    patch_size: list[int]
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    features_per_stage: list[int]

    def model_args(self) -> dict[str, Any]:
        """Return the keyword arguments for :class:`PlainUNet` or ``create_model``."""
        return {
            "features_per_stage": list(self.features_per_stage),
            "strides": [list(s) for s in self.strides],
            "kernel_sizes": [list(k) for k in self.kernel_sizes],
        }


def plan_topology(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    *,
    min_feature_map_size: int = 4,
    max_stages: int | None = None,
    base_features: int = 32,
    max_features: int = 320,
) -> Topology:
    """Derive strides and kernel sizes from a patch size and spacing, nnU-Net style.

    At every step, each axis is halved when it stays at least
    ``min_feature_map_size`` voxels long and its current spacing is less than
    twice the smallest current spacing of the axes that can still be halved. An
    axis gets kernel size 3 once its current spacing is less than twice the
    smallest current spacing, and 1 before that, so strongly anisotropic axes are
    not convolved across until the other axes have caught up. Features double
    per stage from ``base_features`` up to ``max_features``.

    Args:
        patch_size: Patch size in voxels, one entry per spatial axis.
        spacing: Voxel spacing in mm, same axis order.
        min_feature_map_size: Smallest allowed size of the lowest-resolution feature map.
        max_stages: Stop adding stages at this number.
        base_features: Feature channels of the first stage.
        max_features: Upper bound of the feature channels.

    Returns:
        The topology. Its ``patch_size`` is rounded up to a multiple of the stride
        product along each axis.

    Raises:
        ValueError: If the patch size and spacing have different lengths or invalid values.

    Example:
        >>> topology = plan_topology((96, 192, 192), (1.5, 1.0, 1.0), base_features=30)
        >>> topology.strides
        [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
        >>> topology.features_per_stage
        [30, 60, 120, 240, 320, 320]
    """
    sizes = [float(s) for s in patch_size]
    current = [float(s) for s in spacing]
    if len(sizes) != len(current) or len(sizes) not in (2, 3):
        raise ValueError(
            "patch_size and spacing must both have 2 or 3 entries, "
            f"got {patch_size!r} and {spacing!r}"
        )
    if min(sizes) < 1 or min(current) <= 0:
        raise ValueError(
            f"patch_size and spacing must be positive, got {patch_size!r} and {spacing!r}"
        )
    dims = len(sizes)
    has_full_kernel = [False] * dims
    strides, kernels = [[1] * dims], []

    def next_kernel() -> list[int]:
        smallest = min(current)
        for axis in range(dims):
            has_full_kernel[axis] |= current[axis] / smallest < 2
        return [3 if full else 1 for full in has_full_kernel]

    kernels.append(next_kernel())
    while max_stages is None or len(strides) < max_stages:
        poolable = [a for a in range(dims) if sizes[a] / 2 >= min_feature_map_size]
        if not poolable:
            break
        smallest = min(current[a] for a in poolable)
        stride = [2 if a in poolable and current[a] / smallest < 2 else 1 for a in range(dims)]
        for axis in range(dims):
            sizes[axis] /= stride[axis]
            current[axis] *= stride[axis]
        strides.append(stride)
        kernels.append(next_kernel())

    divisor = [math.prod(axis) for axis in zip(*strides, strict=True)]
    rounded = [math.ceil(int(p) / d) * d for p, d in zip(patch_size, divisor, strict=True)]
    features = [min(base_features * 2**i, max_features) for i in range(len(strides))]
    return Topology(rounded, strides, kernels, features)
