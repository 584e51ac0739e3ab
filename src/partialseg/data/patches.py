"""Patch sampling with foreground oversampling for training."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from partialseg.data.cases import LoadedCase

logger = logging.getLogger(__name__)


class PatchDataset(Dataset):
    """Crops training patches from loaded cases; index ``i`` draws a patch from case ``i``.

    A fraction ``foreground_fraction`` of the patches (one third by default, as in
    nnU-Net) is centred on a random voxel of a label value chosen uniformly among
    the values present in the case; the others are random crops. Regions outside
    the volume are filled with ``pad_value`` in the image and 0 in the label map:
    outside the scan is air, which no organ class covers.

    Pair it with :class:`~partialseg.sampling.DatasetBalancedSampler` to choose
    which case each patch comes from.

    Args:
        cases: Cases with normalised images.
        patch_size: Patch size (z, y, x) in voxels.
        foreground_fraction: Probability that a patch is centred on foreground.
        pad_value: Image value used outside the volume (normalised air).
        transform: Optional callable applied to ``(image, label)`` tensors of shapes
            (1, z, y, x), returning the augmented pair.
        seed: Seed of the crop positions; each worker and epoch adds to it.

    Example:
        >>> image = np.zeros((20, 20, 20), dtype=np.float32)
        >>> label = np.zeros((20, 20, 20), dtype=np.uint8)
        >>> label[5:8, 5:8, 5:8] = 1
        >>> case = LoadedCase("c", "D1", image, label, {1: np.argwhere(label == 1)})
        >>> patches = PatchDataset([case], patch_size=(8, 8, 8))
        >>> sample = patches[0]
        >>> tuple(sample["image"].shape), tuple(sample["label"].shape), sample["dataset"]
        ((1, 8, 8, 8), (8, 8, 8), 'D1')
    """

    def __init__(
        self,
        cases: Sequence[LoadedCase],
        *,
        patch_size: Sequence[int],
        foreground_fraction: float = 1 / 3,
        pad_value: float = 0.0,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
        seed: int = 0,
    ) -> None:
        if not cases:
            raise ValueError("PatchDataset needs at least one case, got an empty list")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must lie in [0, 1], got {foreground_fraction}")
        self.cases = list(cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_fraction = foreground_fraction
        self.pad_value = pad_value
        self.transform = transform
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        centre_on_foreground = self.rng.random() < self.foreground_fraction
        start = self._crop_start(case, centre_on_foreground)
        image = _crop(case.image, start, self.patch_size, self.pad_value)
        label = _crop(case.label, start, self.patch_size, 0)

        image_tensor = torch.from_numpy(image)[None]
        label_tensor = torch.from_numpy(label.astype(np.int64))[None]
        if self.transform is not None:
            image_tensor, label_tensor = self.transform(image_tensor, label_tensor)
        return {
            "image": image_tensor.float(),
            "label": label_tensor[0].to(
                torch.uint8 if case.label.dtype == np.uint8 else torch.int32
            ),
            "dataset": case.dataset,
            "case": case.name,
        }

    def _crop_start(self, case: LoadedCase, centre_on_foreground: bool) -> np.ndarray:
        shape = np.asarray(case.image.shape)
        patch = np.asarray(self.patch_size)
        if centre_on_foreground and case.foreground:
            value = self.rng.choice(sorted(case.foreground))
            voxels = case.foreground[value]
            centre = voxels[self.rng.integers(len(voxels))]
            return centre - patch // 2
        # Random crops may extend past the border by up to half a patch where the
        # volume is smaller than the patch, so every voxel can reach the centre.
        low = np.minimum(0, shape - patch) // 2
        high = np.maximum(shape - patch, low)
        return np.array([self.rng.integers(lo, hi + 1) for lo, hi in zip(low, high, strict=True)])


def _crop(
    array: np.ndarray, start: np.ndarray, size: Sequence[int], pad_value: float
) -> np.ndarray:
    """Crop ``array[start:start+size]``, filling the part outside the array with ``pad_value``."""
    out = np.full(tuple(size), pad_value, dtype=array.dtype)
    source = []
    target = []
    for begin, length, extent in zip(start, size, array.shape, strict=True):
        lo, hi = max(int(begin), 0), min(int(begin) + length, extent)
        if hi <= lo:
            return out
        source.append(slice(lo, hi))
        target.append(slice(lo - int(begin), hi - int(begin)))
    out[tuple(target)] = array[tuple(source)]
    return out


def collate_patches(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack patches into a batch, keeping dataset and case names as lists."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.stack([s["label"] for s in samples]),
        "dataset": [s["dataset"] for s in samples],
        "case": [s["case"] for s in samples],
    }
