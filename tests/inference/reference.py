"""A straightforward whole-volume sliding-window prediction to check the streaming one against.

It keeps the full probability volume of every class in float64, weights windows
with a 3D Gaussian map and resamples each class with SimpleITK, so it shares
no stitching or resampling code with ``partialseg.inference``.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
import torch

from partialseg.data.preprocessing import resample_image


def _starts(size: int, patch: int, step_size: float) -> list[int]:
    if size == patch:
        return [0]
    count = math.ceil((size - patch) / (patch * step_size)) + 1
    return [int(i * (size - patch) / (count - 1) + 0.5) for i in range(count)]


def _gaussian_map(patch: tuple[int, int, int]) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(p, dtype=np.float64) for p in patch], indexing="ij")
    exponent = sum(((g - (p - 1) / 2) / (p / 8)) ** 2 for g, p in zip(grids, patch, strict=True))
    return np.exp(-0.5 * exponent)


def reference_probabilities(
    network: torch.nn.Module, image: sitk.Image, *, step_size: float = 0.5
) -> dict[str, np.ndarray]:
    """Return each class's probabilities (z, y, x), float64, on the grid of ``image``."""
    prep = network.preprocessing
    resampled = resample_image(sitk.Cast(image, sitk.sitkFloat32), prep.spacing)
    volume = prep.normalize(sitk.GetArrayFromImage(resampled)).astype(np.float32)
    shape = volume.shape
    patch = prep.patch_size
    before = [max(p - s, 0) // 2 for s, p in zip(shape, patch, strict=True)]
    widths = [(b, max(p - s, 0) - b) for b, s, p in zip(before, shape, patch, strict=True)]
    air = float(prep.normalize(np.array([prep.ct_clip[0]]))[0])
    volume = np.pad(volume, widths, constant_values=air)

    gaussian = _gaussian_map(patch)
    total = np.zeros((network.num_classes, *volume.shape))
    weights = np.zeros(volume.shape)
    starts = [_starts(s, p, step_size) for s, p in zip(volume.shape, patch, strict=True)]
    with torch.no_grad():
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    region = (
                        slice(z, z + patch[0]),
                        slice(y, y + patch[1]),
                        slice(x, x + patch[2]),
                    )
                    window = torch.from_numpy(np.ascontiguousarray(volume[region]))[None, None]
                    logits = network(window)
                    logits = logits[0] if isinstance(logits, list) else logits
                    probabilities = torch.sigmoid(logits[0].double()).numpy()
                    total[(slice(None), *region)] += probabilities * gaussian
                    weights[region] += gaussian
    crop = tuple(slice(b, b + s) for b, s in zip(before, shape, strict=True))
    average = total[(slice(None), *crop)] / weights[crop]

    result = {}
    for index, name in enumerate(network.class_names):
        probability = sitk.GetImageFromArray(average[index])
        probability.CopyInformation(resampled)
        # Input voxels beyond the last network voxel centre take the edge value
        # along that axis and stay linear along the others: replicate the edge.
        probability = sitk.ZeroFluxNeumannPad(probability, [2, 2, 2], [2, 2, 2])
        back = sitk.Resample(
            probability, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat64
        )
        result[name] = sitk.GetArrayFromImage(back)
    return result
