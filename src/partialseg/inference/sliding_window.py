"""Sliding-window prediction that streams finished z-slabs instead of holding the volume.

Windows are visited row by row along the slowest array axis (z). The running
weighted sum lives in a :class:`SlabAccumulator` that covers only the z-planes
that the current row of windows touches, plus at most one plane kept for the
interpolation back to the input grid. After each row, the planes that no later
window touches are final and go to a consumer. The consumer returns the first
plane it still needs, and every plane below it is released.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from partialseg.inference._gaussian import normalized_axis_weights, window_starts

logger = logging.getLogger(__name__)

__all__ = ["SlabAccumulator", "WindowGrid", "run_sliding_window"]

_CLASS_CHUNK = 8

Start = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class WindowGrid:
    """Window starts and per-axis normalised weights for one padded volume.

    Attributes:
        shape: Padded volume shape (z, y, x); at least ``patch_size`` along every axis.
        patch_size: Window shape (z, y, x).
        starts: Window starts along each axis.
        axis_weights: For each axis, the normalised 1D weights of every start.

    Example:
        >>> grid = WindowGrid.build((160, 100, 100), (96, 64, 64), step_size=0.5)
        >>> grid.starts, len(grid)
        (([0, 32, 64], [0, 18, 36], [0, 18, 36]), 27)
    """

    shape: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    starts: tuple[list[int], list[int], list[int]]
    axis_weights: tuple[dict[int, np.ndarray], ...]

    @classmethod
    def build(
        cls,
        shape: Sequence[int],
        patch_size: Sequence[int],
        *,
        step_size: float = 0.5,
        gaussian: bool = True,
    ) -> WindowGrid:
        """Place windows ``step_size * patch_size`` apart at most and weight them.

        Args:
            shape: Padded volume shape (z, y, x).
            patch_size: Window shape (z, y, x).
            step_size: Maximum window distance as a fraction of the patch size, in (0, 1].
            gaussian: Weight voxels with a Gaussian of sigma ``patch / 8`` per
                axis; otherwise weight all voxels equally.

        Returns:
            The window grid.
        """
        if not 0 < step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], got {step_size!r}")
        shape = tuple(int(s) for s in shape)
        patch = tuple(int(p) for p in patch_size)
        starts = tuple(window_starts(n, p, step_size) for n, p in zip(shape, patch, strict=True))
        weights = tuple(
            normalized_axis_weights(n, p, s, gaussian=gaussian)
            for n, p, s in zip(shape, patch, starts, strict=True)
        )
        return cls(shape, patch, starts, weights)

    def __len__(self) -> int:
        return len(self.starts[0]) * len(self.starts[1]) * len(self.starts[2])

    def windows(self) -> Iterator[Start]:
        """Yield window starts (z, y, x) row by row along z."""
        for z in self.starts[0]:
            for y in self.starts[1]:
                for x in self.starts[2]:
                    yield z, y, x

    def weight(self, start: Start) -> np.ndarray:
        """Return the float32 weights of one window; over all windows they sum to 1 per voxel."""
        wz, wy, wx = (self.axis_weights[axis][start[axis]] for axis in range(3))
        return (wz[:, None, None] * wy[None, :, None] * wx[None, None, :]).astype(np.float32)


class SlabAccumulator:
    """Weighted sum of centred probabilities for a band of z-planes of the network grid.

    The band contains ``depth`` planes starting at :attr:`base`. Planes below the
    base have been released and must receive no more contributions.

    Args:
        num_classes: Number of classes.
        depth: Number of z-planes held.
        height: Length of the y axis.
        width: Length of the x axis.
        dtype: Accumulator dtype.

    Attributes:
        buffer: The accumulator, ``(num_classes, depth, height, width)``.
        base: Network-grid index of ``buffer[:, 0]``.
    """

    def __init__(
        self, num_classes: int, depth: int, height: int, width: int, dtype: torch.dtype
    ) -> None:
        self.buffer = torch.zeros((num_classes, depth, height, width), dtype=dtype)
        self.base = 0
        self._scratch: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Size of the buffer in bytes."""
        return self.buffer.numel() * self.buffer.element_size()

    def add(self, contribution: torch.Tensor, start: Start, *, first_class: int = 0) -> None:
        """Add a weighted window ``(classes, pz, py, px)`` whose corner is at ``start``.

        The window's classes are ``first_class`` to ``first_class + classes - 1``.
        """
        depth, height, width = contribution.shape[1:]
        first = start[0] - self.base
        if first < 0 or first + depth > self.buffer.shape[1]:
            raise RuntimeError(
                f"window at z={start[0]} falls outside the held planes "
                f"{self.base}..{self.base + self.buffer.shape[1] - 1}"
            )
        y, x = start[1], start[2]
        for begin in range(0, contribution.shape[0], _CLASS_CHUNK):
            end = begin + _CLASS_CHUNK
            part = contribution[begin:end].to(device="cpu", dtype=torch.float32)
            classes = slice(first_class + begin, first_class + min(end, contribution.shape[0]))
            target = self.buffer[classes, first : first + depth, y : y + height, x : x + width]
            if target.dtype == torch.float32:
                target += part
            else:
                self._add_rounded(target, part)

    def _add_rounded(self, target: torch.Tensor, part: torch.Tensor) -> None:
        """Add float32 ``part`` to the float16 view ``target`` in float32, rounding once.

        Each class goes through one reused float32 scratch volume. On CPUs that
        took a third of the time of a mixed-dtype add over all classes at once
        (torch 2.14, 2 cores), mostly because no new large tensor is allocated.
        """
        shape = tuple(part.shape[1:])
        if self._scratch is None or tuple(self._scratch.shape) != shape:
            self._scratch = torch.empty(shape, dtype=torch.float32)
        for index in range(part.shape[0]):
            self._scratch.copy_(target[index])
            part[index].add_(self._scratch)
            target[index].copy_(part[index])

    def planes(self, start: int, stop: int) -> torch.Tensor:
        """Return a view of network planes ``start`` to ``stop - 1``."""
        return self.buffer[:, start - self.base : stop - self.base]

    def release_below(self, plane: int) -> None:
        """Drop the planes below ``plane``, moving the rest to the front and zeroing the tail."""
        shift = plane - self.base
        if shift <= 0:
            return
        depth = self.buffer.shape[1]
        kept = max(depth - shift, 0)
        # Copying plane by plane in increasing order never overwrites a plane
        # that is still to be read, because every source lies above its target.
        for target in range(kept):
            self.buffer[:, target] = self.buffer[:, target + shift]
        self.buffer[:, kept:] = 0
        self.base = plane


def run_sliding_window(
    predict: Callable[[torch.Tensor], Iterable[tuple[int, torch.Tensor]]],
    volume: torch.Tensor,
    grid: WindowGrid,
    consume: Callable[[torch.Tensor, int, int], int],
    *,
    num_classes: int,
    accumulate_dtype: torch.dtype = torch.float32,
    batch_size: int = 1,
    progress: bool = True,
) -> SlabAccumulator:
    """Predict every window of ``volume`` and stream the finished z-planes to ``consume``.

    Args:
        predict: Maps a batch ``(B, 1, pz, py, px)`` to ``(first class,
            chunk)`` pairs, where each chunk ``(B, c, pz, py, px)`` is added to
            classes ``first class`` to ``first class + c - 1``. The chunks of a
            class add up to its centred probability (probability - 0.5). The
            chunks are modified in place.
        volume: Normalised, padded volume ``(z, y, x)`` on the CPU.
        grid: The windows of ``volume``.
        consume: Called with ``(planes, first_plane, finished)`` after every row
            of windows, where ``planes`` contains the averaged centred probabilities
            of network planes ``first_plane`` to ``finished - 1``. It returns the
            first plane it still needs.
        num_classes: Number of classes ``predict`` returns.
        accumulate_dtype: Accumulator dtype.
        batch_size: Windows per call of ``predict``.
        progress: Show a progress bar.

    Returns:
        The accumulator, for inspecting its size.
    """
    depth = grid.patch_size[0] + 1
    accumulator = SlabAccumulator(num_classes, depth, *grid.shape[1:], accumulate_dtype)
    logger.info(
        "sliding window over %s with %d windows, accumulator %.1f MB",
        grid.shape,
        len(grid),
        accumulator.nbytes / 1e6,
    )
    z_starts = grid.starts[0]
    row_windows = len(grid.starts[1]) * len(grid.starts[2])
    with tqdm(total=len(grid), disable=not progress, unit="window", desc="predict") as bar:
        for row, z in enumerate(z_starts):
            windows = [(z, y, x) for y in grid.starts[1] for x in grid.starts[2]]
            for begin in range(0, row_windows, batch_size):
                batch = windows[begin : begin + batch_size]
                _predict_batch(predict, volume, grid, accumulator, batch)
                bar.update(len(batch))
            finished = z_starts[row + 1] if row + 1 < len(z_starts) else grid.shape[0]
            planes = accumulator.planes(accumulator.base, finished)
            keep_from = consume(planes, accumulator.base, finished)
            accumulator.release_below(min(keep_from, finished))
    return accumulator


def _predict_batch(
    predict: Callable[[torch.Tensor], Iterable[tuple[int, torch.Tensor]]],
    volume: torch.Tensor,
    grid: WindowGrid,
    accumulator: SlabAccumulator,
    batch: list[Start],
) -> None:
    pz, py, px = grid.patch_size
    patches = torch.stack([volume[z : z + pz, y : y + py, x : x + px] for z, y, x in batch])
    weights = [torch.from_numpy(grid.weight(start)) for start in batch]
    for first_class, centred in predict(patches[:, None]):
        for index, start in enumerate(batch):
            weights[index] = weights[index].to(centred.device)
            contribution = centred[index]
            contribution *= weights[index]
            accumulator.add(contribution, start, first_class=first_class)
