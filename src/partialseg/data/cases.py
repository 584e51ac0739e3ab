"""Loading training cases into memory at the target spacing, and CT statistics."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from partialseg.data.io import check_same_grid, read_image, read_image_information
from partialseg.data.preprocessing import resample_image

if TYPE_CHECKING:
    from partialseg.data.nnunet import Case
    from partialseg.labels import LabelRegistry

logger = logging.getLogger(__name__)

# Foreground voxels kept per label value for centring patches; a random subset
# keeps memory small on large label maps without changing the distribution.
_MAX_FOREGROUND_SAMPLES = 10_000


@dataclasses.dataclass
class LoadedCase:
    """A case resampled to the target spacing, ready for patch sampling.

    Attributes:
        name: Case identifier.
        dataset: Dataset the case belongs to.
        image: CT intensities, float32 (z, y, x); Hounsfield units until
            :func:`normalize_cases` replaces them with normalised values.
        label: Integer label map (z, y, x) on the same grid.
        foreground: Label value to an (N, 3) array of voxel indices holding it.
    """

    name: str
    dataset: str
    image: np.ndarray
    label: np.ndarray
    foreground: dict[int, np.ndarray]


def load_case(
    case: Case,
    spacing: Sequence[float],
    registry: LabelRegistry,
    *,
    rng: np.random.Generator | None = None,
) -> LoadedCase:
    """Read a case, check its grid and label values, and resample it to ``spacing``.

    Args:
        case: The case to read.
        spacing: Target spacing in mm, (z, y, x).
        registry: Registry that declares the label values of the case's dataset.
        rng: Random generator for subsampling foreground locations.

    Returns:
        The case in memory, image in Hounsfield units.

    Raises:
        FileNotFoundError: The image or label file is missing.
        GeometryMismatchError: Image and label map lie on different grids.
        ValueError: The label map holds a value the dataset does not declare, or the
            image holds NaN values.
    """
    rng = rng or np.random.default_rng(0)
    image = read_image(case.image_path)
    label = read_image(case.label_path)
    check_same_grid(image, label, image_name=str(case.image_path), label_name=str(case.label_path))

    label_array = sitk.GetArrayViewFromImage(label)
    if np.issubdtype(label_array.dtype, np.floating):
        if not np.array_equal(label_array, np.round(label_array)):
            raise ValueError(
                f"{case.label_path} is a label map with non-integer values; "
                "store label maps as integers"
            )
        label = sitk.Cast(label, sitk.sitkInt32)
        label_array = sitk.GetArrayViewFromImage(label)
    registry.validate_label_map(label_array, case.dataset, source=str(case.label_path))
    if not label_array.any():
        logger.warning(
            "label map %s contains only background (0), so every class of dataset %s is "
            "trained as absent in case %s; check that this is the right label file",
            case.label_path,
            case.dataset,
            case.name,
        )
    image_array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(image_array).all():
        raise ValueError(
            f"{case.image_path} holds NaN or infinite intensities; fix or mask them before training"
        )

    # uint8 holds the label maps of almost every dataset; larger declared values
    # need a wider type, or they would wrap around onto other classes.
    max_value = max(registry.label_values_of(case.dataset))
    label_type = sitk.sitkUInt8 if max_value <= 255 else sitk.sitkInt32
    image = resample_image(sitk.Cast(image, sitk.sitkFloat32), spacing)
    label = resample_image(sitk.Cast(label, label_type), spacing, is_label=True)
    label_array = sitk.GetArrayFromImage(label)
    return LoadedCase(
        name=case.name,
        dataset=case.dataset,
        image=sitk.GetArrayFromImage(image),
        label=label_array,
        foreground=_foreground_locations(label_array, rng),
    )


def _foreground_locations(label: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    locations = {}
    for value in np.unique(label):
        if value == 0:
            continue
        indices = np.argwhere(label == value)
        if len(indices) > _MAX_FOREGROUND_SAMPLES:
            indices = indices[rng.choice(len(indices), _MAX_FOREGROUND_SAMPLES, replace=False)]
        locations[int(value)] = indices
    return locations


def load_cases(
    cases: Sequence[Case],
    spacing: Sequence[float],
    registry: LabelRegistry,
    *,
    seed: int = 0,
    progress: bool = True,
) -> list[LoadedCase]:
    """Load every case with :func:`load_case`, showing a progress bar.

    NOTE: every case is held in memory at the target spacing; collections larger
    than the machine's memory need an on-disk cache, which partialseg does not
    write yet.
    """
    rng = np.random.default_rng(seed)
    iterator = tqdm(cases, desc="loading cases", unit="case", disable=not progress)
    return [load_case(case, spacing, registry, rng=rng) for case in iterator]


def ct_statistics(
    cases: Sequence[LoadedCase],
    *,
    percentiles: tuple[float, float] = (0.5, 99.5),
    max_voxels_per_case: int = 100_000,
    seed: int = 0,
) -> tuple[tuple[float, float], float, float]:
    """Compute nnU-Net's CT normalisation statistics from foreground voxels.

    The intensities of labelled voxels (label > 0) of all cases are pooled; the
    clip range is their ``percentiles``, and the mean and standard deviation are
    taken after clipping.

    Args:
        cases: Loaded cases, images still in Hounsfield units.
        percentiles: Lower and upper percentile of the clip range.
        max_voxels_per_case: Foreground voxels sampled per case.
        seed: Seed of the voxel sampling.

    Returns:
        ``((lower, upper), mean, std)``.

    Raises:
        ValueError: No case has any labelled voxel.

    Example:
        >>> image = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
        >>> label = np.ones((10, 10, 10), dtype=np.uint8)
        >>> case = LoadedCase("c", "d", image, label, {})
        >>> clip, mean, std = ct_statistics([case], percentiles=(0.0, 100.0))
        >>> clip, round(mean, 1)
        ((0.0, 999.0), 499.5)
    """
    rng = np.random.default_rng(seed)
    samples = []
    for case in cases:
        values = case.image[case.label > 0]
        if len(values) > max_voxels_per_case:
            values = rng.choice(values, max_voxels_per_case, replace=False)
        samples.append(values)
    pooled = np.concatenate(samples) if samples else np.empty(0, dtype=np.float32)
    if pooled.size == 0:
        raise ValueError(
            "cannot compute CT statistics: no case has a labelled voxel; check the label maps"
        )
    lower, upper = (float(v) for v in np.percentile(pooled, percentiles))
    clipped = np.clip(pooled, lower, upper)
    return (lower, upper), float(clipped.mean()), float(max(clipped.std(), 1e-6))


def median_spacing(cases: Sequence[Case]) -> tuple[float, float, float]:
    """Return the median voxel spacing (z, y, x) of the cases' images, read from headers."""
    spacings = [read_image_information(case.image_path).GetSpacing()[::-1] for case in cases]
    median = np.median(np.asarray(spacings), axis=0)
    return (float(median[0]), float(median[1]), float(median[2]))
