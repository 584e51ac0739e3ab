"""Mapping from the input image grid to the network grid, and slab-wise resampling back.

The network grid is the input image resampled to the network's spacing with the
same origin and direction, then padded. Because the two grids share their
direction, each array axis of the input maps to the same array axis of the
network grid by a scale and an offset. :func:`axis_maps` derives these through
physical space (index -> millimetres -> index), so any storage orientation,
including oblique directions, is handled.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import torch

# Input voxels resampled per class in one step, which bounds the temporary tensors.
_BLOCK_VOXELS = 1 << 21


@dataclasses.dataclass(frozen=True)
class AxisMap:
    """Linear map from input indices to continuous network-grid indices along one axis.

    Attributes:
        scale: Network-grid voxels per input voxel.
        offset: Network-grid continuous index of input index 0.
        low: First network-grid index that contains image data (after padding).
        high: Last network-grid index that contains image data.
    """

    scale: float
    offset: float
    low: int
    high: int

    def neighbours(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the two network-grid neighbours and the weight of the upper one.

        Points outside ``[low, high]`` take the value of the nearest data plane,
        like nearest-neighbour extrapolation.

        Example:
            >>> lower, upper, weight = AxisMap(0.5, 0.0, 0, 3).neighbours(4)
            >>> lower.tolist(), upper.tolist(), weight.tolist()
            ([0, 0, 1, 1], [1, 1, 2, 2], [0.0, 0.5, 0.0, 0.5])
        """
        position = self.scale * np.arange(count, dtype=np.float64) + self.offset
        position = np.clip(position, self.low, self.high)
        lower = np.minimum(np.floor(position).astype(np.int64), self.high)
        upper = np.minimum(lower + 1, self.high)
        return lower, upper, position - lower


def _index_to_physical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Return the matrix and origin mapping (x, y, z) indices to physical points."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = direction @ np.diag(image.GetSpacing())
    return matrix, np.array(image.GetOrigin(), dtype=np.float64)


def axis_maps(
    original: sitk.Image, network_grid: sitk.Image, padding: Sequence[int]
) -> tuple[AxisMap, AxisMap, AxisMap]:
    """Map each array axis (z, y, x) of ``original`` into the padded network grid.

    Args:
        original: The input image.
        network_grid: ``original`` resampled to the network spacing, before padding.
        padding: Voxels padded before the data along (z, y, x).

    Returns:
        One :class:`AxisMap` per array axis, in (z, y, x) order.

    Raises:
        ValueError: If the two grids are rotated against each other, so no
            per-axis map exists.
    """
    original_matrix, original_origin = _index_to_physical(original)
    network_matrix, network_origin = _index_to_physical(network_grid)
    inverse = np.linalg.inv(network_matrix)
    matrix = inverse @ original_matrix
    offset = inverse @ (original_origin - network_origin)
    off_diagonal = matrix - np.diag(np.diag(matrix))
    if np.abs(off_diagonal).max() > 1e-6 * np.abs(matrix).max():
        raise ValueError(
            "the network grid must share the input image's direction; got index map "
            f"{matrix.round(6).tolist()}"
        )
    sizes = network_grid.GetSize()
    maps = []
    for axis_xyz in (2, 1, 0):
        pad = int(padding[2 - axis_xyz])
        maps.append(
            AxisMap(
                scale=float(matrix[axis_xyz, axis_xyz]),
                offset=float(offset[axis_xyz]) + pad,
                low=pad,
                high=pad + sizes[axis_xyz] - 1,
            )
        )
    return maps[0], maps[1], maps[2]


@dataclasses.dataclass(frozen=True)
class _Neighbours:
    """Lower and upper neighbour indices and upper weights along one axis of an array."""

    lower: np.ndarray
    upper: np.ndarray
    weight: np.ndarray

    @classmethod
    def build(cls, lower: np.ndarray, upper: np.ndarray, weight: np.ndarray, axis: int):
        shape = [1, 1, 1]
        shape[axis] = len(weight)
        return cls(lower, upper, weight.astype(np.float32).reshape(shape))

    def interpolate(self, values: np.ndarray, axis: int) -> np.ndarray:
        # np.take gathers along the last axis many times faster than
        # torch.index_select on CPUs (measured with torch 2.14).
        low_values = np.take(values, self.lower, axis=axis).astype(np.float32, copy=False)
        result = np.take(values, self.upper, axis=axis).astype(np.float32, copy=False)
        result -= low_values
        result *= self.weight
        result += low_values
        return result


class OriginalGridResampler:
    """Resample finished planes of the network grid back onto the input grid, row by row.

    The output for input row ``r`` (along array axis 0) depends on the two
    network planes around it. A row is computed as soon as both are final, so
    slab-wise resampling gives the same values as resampling the whole volume.
    Masks are thresholded at probability 0.5 (centred value >= 0) and kept
    bit-packed and zlib-compressed until :meth:`mask` unpacks one class. That
    costs at most 1/8 byte per voxel and class, and much less for organ masks,
    which are mostly zeros.

    Args:
        maps: Axis maps from :func:`axis_maps`, (z, y, x).
        shape: Array shape (z, y, x) of the input image.
        num_classes: Number of classes.
        keep_probabilities: Also store float16 probabilities on the input grid.
    """

    def __init__(
        self,
        maps: tuple[AxisMap, AxisMap, AxisMap],
        shape: Sequence[int],
        num_classes: int,
        *,
        keep_probabilities: bool = False,
    ) -> None:
        self.maps = maps
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = num_classes
        self.next_row = 0
        self._lower, self._upper, self._weight = maps[0].neighbours(self.shape[0])
        self._y = _Neighbours.build(*maps[1].neighbours(self.shape[1]), axis=1)
        self._x = _Neighbours.build(*maps[2].neighbours(self.shape[2]), axis=2)
        self._packed: list[list[tuple[int, int, bytes]]] = [[] for _ in range(num_classes)]
        self.probabilities: np.ndarray | None = None
        if keep_probabilities:
            self.probabilities = np.zeros((num_classes, *self.shape), dtype=np.float16)

    def consume(self, planes: torch.Tensor, first_plane: int, finished: int) -> int:
        """Emit every pending row whose network planes lie below ``finished``.

        Args:
            planes: Centred probabilities ``(classes, n, height, width)`` of
                network planes ``first_plane`` to ``first_plane + n - 1``.
            first_plane: Network-grid index of ``planes[:, 0]``.
            finished: Planes below this index receive no more contributions.

        Returns:
            The first network plane still needed by a pending row; planes below
            it may be released.
        """
        stop = self.next_row
        while stop < self.shape[0] and self._upper[stop] < finished:
            stop += 1
        row_voxels = self.shape[1] * self.shape[2]
        block = max(1, _BLOCK_VOXELS // row_voxels)
        for start in range(self.next_row, stop, block):
            self._emit(planes, first_plane, start, min(start + block, stop))
        self.next_row = stop
        if self.next_row >= self.shape[0]:
            return finished
        return int(self._lower[self.next_row])

    def _emit(self, planes: torch.Tensor, first_plane: int, start: int, stop: int) -> None:
        """Resample input rows ``start`` to ``stop - 1`` of every class, one class at a time."""
        rows = slice(start, stop)
        z = _Neighbours.build(
            self._lower[rows] - first_plane,
            self._upper[rows] - first_plane,
            self._weight[rows],
            axis=0,
        )
        for class_index in range(self.num_classes):
            values = z.interpolate(planes[class_index].numpy(), 0)
            values = self._y.interpolate(values, 1)
            values = self._x.interpolate(values, 2)
            packed = zlib.compress(np.packbits(values >= 0).tobytes(), 1)
            self._packed[class_index].append((start, stop, packed))
            if self.probabilities is not None:
                self.probabilities[class_index, rows] = values + 0.5

    def mask(self, class_index: int) -> np.ndarray:
        """Unpack and return the uint8 mask (z, y, x) of one class, releasing its packed rows."""
        if self.next_row < self.shape[0]:
            raise RuntimeError(
                f"only {self.next_row} of {self.shape[0]} rows have been computed; "
                "consume the remaining network planes first"
            )
        mask = np.empty(self.shape, dtype=np.uint8)
        row_size = self.shape[1] * self.shape[2]
        for start, stop, packed in self._packed[class_index]:
            packed_bits = np.frombuffer(zlib.decompress(packed), np.uint8)
            bits = np.unpackbits(packed_bits, count=(stop - start) * row_size)
            mask[start:stop] = bits.reshape(stop - start, *self.shape[1:])
        self._packed[class_index] = []
        return mask
