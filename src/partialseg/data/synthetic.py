"""A synthetic partially labeled CT collection for the demo and for tests."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from partialseg.data.io import write_image

logger = logging.getLogger(__name__)

# Tissue values in Hounsfield units and the label of each structure in the
# full anatomy map that every synthetic case is drawn from.
_ANATOMY = {
    "liver": (1, 60.0),
    "liver_tumor": (2, 15.0),
    "spleen": (3, 45.0),
    "kidney_left": (4, 160.0),
    "kidney_right": (5, 160.0),
}

# Each dataset annotates a different subset with its own label values. S1 and S3
# both have "liver" under different protocols: S1 includes the tumour (a region
# of two values, so liver_tumor is nested in it), S3 excludes it.
SYNTHETIC_DATASETS: dict[str, dict[str, list[str]]] = {
    "DatasetS1_LiverSpleen": {
        "liver": ["liver", "liver_tumor"],
        "liver_tumor": ["liver_tumor"],
        "spleen": ["spleen"],
    },
    "DatasetS2_SpleenKidney": {
        "spleen": ["spleen"],
        "kidney_left": ["kidney_left"],
        "kidney_right": ["kidney_right"],
    },
    "DatasetS3_LiverKidney": {
        "liver": ["liver"],
        "kidney_left": ["kidney_left"],
        "kidney_right": ["kidney_right"],
    },
}

SYNTHETIC_SHAPE = (32, 64, 64)
SYNTHETIC_SPACING_ZYX = (3.0, 2.5, 2.5)


def synthetic_case(
    rng: np.random.Generator, shape: Sequence[int] = SYNTHETIC_SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic abdominal CT and its full anatomy label map.

    Args:
        rng: Random generator; positions, sizes and noise vary per case.
        shape: Volume shape (z, y, x).

    Returns:
        ``(image, anatomy)``: int16 Hounsfield units and a uint8 map with the
        values of ``_ANATOMY`` (liver 1, liver tumour 2, spleen 3, left kidney 4,
        right kidney 5).

    Example:
        >>> image, anatomy = synthetic_case(np.random.default_rng(0))
        >>> image.shape, sorted(np.unique(anatomy).tolist())
        ((32, 64, 64), [0, 1, 2, 3, 4, 5])
    """
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    image = np.full(shape, -1000.0, dtype=np.float32)
    anatomy = np.zeros(shape, dtype=np.uint8)

    body = (y / 0.8) ** 2 + (x / 0.95) ** 2 <= 1
    image[body] = -90.0
    image[(y / 0.7) ** 2 + (x / 0.85) ** 2 <= 1] = 30.0

    def ellipsoid(centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
        jitter = rng.normal(0, 0.04, 3)
        scale = rng.uniform(0.85, 1.15)
        return (
            ((z - centre[0] - jitter[0]) / (radii[0] * scale)) ** 2
            + ((y - centre[1] - jitter[1]) / (radii[1] * scale)) ** 2
            + ((x - centre[2] - jitter[2]) / (radii[2] * scale)) ** 2
        ) <= 1

    liver = ellipsoid((0.1, -0.15, -0.4), (0.6, 0.35, 0.35))
    tumor_centre = (0.1 + rng.uniform(-0.2, 0.2), -0.15, -0.4 + rng.uniform(-0.1, 0.1))
    tumor = ellipsoid(tumor_centre, (0.25, 0.12, 0.12)) & liver
    structures = {
        "liver": liver,
        "liver_tumor": tumor,
        "spleen": ellipsoid((0.1, -0.1, 0.5), (0.35, 0.2, 0.15)),
        "kidney_left": ellipsoid((-0.3, 0.35, 0.35), (0.35, 0.15, 0.12)),
        "kidney_right": ellipsoid((-0.3, 0.35, -0.35), (0.35, 0.15, 0.12)),
    }
    for name, mask in structures.items():
        value, hounsfield = _ANATOMY[name]
        anatomy[mask] = value
        image[mask] = hounsfield

    image += rng.normal(0, 15, shape).astype(np.float32)
    return image.astype(np.int16), anatomy


def protocol_label_map(anatomy: np.ndarray, dataset: str) -> np.ndarray:
    """Return the label map that ``dataset`` annotates for an anatomy map.

    Structures a dataset does not annotate become 0: they are unlabelled, not absent.
    Label values follow the order of the dataset's classes, but a region that covers
    other classes (S1's liver includes its tumour) gets no value of its own.
    """
    values = _dataset_label_values(dataset)
    label = np.zeros_like(anatomy)
    for structure, value in values.items():
        label[anatomy == _ANATOMY[structure][0]] = value
    return label


def _dataset_label_values(dataset: str) -> dict[str, int]:
    """Map each anatomical structure a dataset annotates to its label value there."""
    structures: list[str] = []
    for members in SYNTHETIC_DATASETS[dataset].values():
        structures.extend(m for m in members if m not in structures)
    return {structure: index + 1 for index, structure in enumerate(structures)}


def _dataset_json(dataset: str, num_cases: int) -> dict:
    values = _dataset_label_values(dataset)
    labels: dict[str, int | list[int]] = {"background": 0}
    for class_name, members in SYNTHETIC_DATASETS[dataset].items():
        member_values = [values[m] for m in members]
        labels[class_name] = member_values[0] if len(member_values) == 1 else member_values
    return {
        "name": dataset,
        "description": "synthetic abdominal CT generated by partialseg",
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }


def _to_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(SYNTHETIC_SPACING_ZYX)))
    image.SetOrigin((-80.0, -80.0, -48.0))
    return image


def make_synthetic_collection(
    root: str | Path,
    *,
    cases_per_dataset: Sequence[int] = (6, 3, 2),
    seed: int = 0,
) -> list[Path]:
    """Write the synthetic datasets in nnU-Net raw layout under ``root``.

    Three datasets with partly overlapping class sets: S1 annotates liver
    (including tumour), liver tumour and spleen; S2 spleen and both kidneys; S3
    liver (excluding tumour, a different protocol) and both kidneys. Every case
    contains every structure, so each dataset leaves some visible organs unlabelled.

    Args:
        root: Folder to write into; created if missing.
        cases_per_dataset: Number of cases of S1, S2 and S3 (unequal on purpose).
        seed: Seed of the anatomy variation and noise.

    Returns:
        The dataset folders.

    Example:
        >>> import tempfile
        >>> folders = make_synthetic_collection(tempfile.mkdtemp(), cases_per_dataset=(1, 1, 1))
        >>> [folder.name for folder in folders]
        ['DatasetS1_LiverSpleen', 'DatasetS2_SpleenKidney', 'DatasetS3_LiverKidney']
    """
    if len(cases_per_dataset) != len(SYNTHETIC_DATASETS):
        raise ValueError(
            f"cases_per_dataset needs {len(SYNTHETIC_DATASETS)} counts (one per dataset), "
            f"got {list(cases_per_dataset)}"
        )
    rng = np.random.default_rng(seed)
    folders = []
    for dataset, num_cases in zip(SYNTHETIC_DATASETS, cases_per_dataset, strict=True):
        folder = Path(root) / dataset
        for index in range(num_cases):
            image, anatomy = synthetic_case(rng)
            case = f"{dataset.split('_')[0].removeprefix('Dataset').lower()}_{index:03d}"
            write_image(_to_image(image), folder / "imagesTr" / f"{case}_0000.nii.gz")
            label = protocol_label_map(anatomy, dataset)
            write_image(_to_image(label), folder / "labelsTr" / f"{case}.nii.gz")
        (folder / "dataset.json").write_text(
            json.dumps(_dataset_json(dataset, num_cases), indent=2)
        )
        folders.append(folder)
        logger.info("wrote %d synthetic cases to %s", num_cases, folder)
    return folders


def make_synthetic_test_case(
    folder: str | Path, *, seed: int = 1000
) -> tuple[Path, dict[str, np.ndarray]]:
    """Write one held-out synthetic CT and return its reference masks per class.

    Args:
        folder: Folder for ``synthetic_test.nii.gz``.
        seed: Seed of the case (distinct from the training cases by default).

    Returns:
        The image path and a dict from class name (``"<dataset>/<class>"``) to the
        boolean reference mask under that dataset's protocol.
    """
    image, anatomy = synthetic_case(np.random.default_rng(seed))
    path = Path(folder) / "synthetic_test.nii.gz"
    write_image(_to_image(image), path)
    references = {}
    for dataset, classes in SYNTHETIC_DATASETS.items():
        for class_name, members in classes.items():
            member_values = [_ANATOMY[m][0] for m in members]
            references[f"{dataset}/{class_name}"] = np.isin(anatomy, member_values)
    return path, references
