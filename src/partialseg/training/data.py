"""The training data pipeline: label registry, in-memory cases and the patch loader."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from partialseg.data.augmentation import Augmentation
from partialseg.data.cases import LoadedCase, load_cases
from partialseg.data.nnunet import Case, RawDataset
from partialseg.data.patches import PatchDataset, collate_patches
from partialseg.data.preprocessing import Preprocessing
from partialseg.labels import LabelRegistry
from partialseg.sampling import DatasetBalancedSampler

logger = logging.getLogger(__name__)


def build_registry(datasets: list[RawDataset]) -> LabelRegistry:
    """Build one label registry from the ``dataset.json`` files of several datasets.

    Raises:
        ValueError: Two datasets have the same name.
    """
    registry = LabelRegistry()
    for dataset in datasets:
        if dataset.name in registry.dataset_names:
            raise ValueError(
                f"dataset name {dataset.name!r} appears twice ({dataset.root}); "
                "dataset folders must have distinct names"
            )
        labels = LabelRegistry.from_dataset_json(dataset.metadata, dataset_name=dataset.name)
        declared = labels.dataset(dataset.name)
        registry.add_dataset(
            dataset.name, dict(declared.classes), label_values=declared.label_values
        )
    return registry


def load_normalized_cases(
    cases: Sequence[Case],
    preprocessing: Preprocessing,
    registry: LabelRegistry,
    *,
    seed: int,
    progress: bool,
) -> list[LoadedCase]:
    """Load cases at the preprocessing's spacing and normalise their CT intensities."""
    loaded = load_cases(cases, preprocessing.spacing, registry, seed=seed, progress=progress)
    for case in loaded:
        case.image = preprocessing.normalize(case.image)
    return loaded


def build_patch_loader(
    cases: list[LoadedCase],
    preprocessing: Preprocessing,
    *,
    batch_size: int,
    iterations_per_epoch: int,
    alpha: float,
    foreground_fraction: float,
    augment: bool,
    num_workers: int,
    seed: int,
    num_replicas: int = 1,
    rank: int = 0,
) -> tuple[DataLoader, PatchDataset, DatasetBalancedSampler]:
    """Build the loader of training patches, drawn with dataset-balanced sampling.

    Each of the ``num_replicas`` processes draws ``iterations_per_epoch *
    batch_size`` cases per epoch from its own positions of one global draw seeded
    by ``seed`` (see :class:`~partialseg.sampling.DatasetBalancedSampler`). Crops
    and augmentation use the rank's own seed, :func:`rank_seed`, so ranks crop
    differently. This function seeds torch's, Python's and NumPy's global
    generators with it, because TorchIO's random transforms draw from torch's.

    With ``num_workers > 0`` each worker reseeds the patch generator, Python and
    NumPy from the seed that the DataLoader gives it, so workers crop differently
    and an epoch depends only on the generator states at its start.

    Returns:
        The loader, its patch dataset and its sampler.
    """
    data_seed = rank_seed(seed, rank)
    torch.manual_seed(data_seed)
    random.seed(data_seed)
    np.random.seed(data_seed)

    transform = Augmentation() if augment else None
    patches = PatchDataset(
        cases,
        patch_size=preprocessing.patch_size,
        foreground_fraction=foreground_fraction,
        pad_value=float(preprocessing.normalize(np.array(preprocessing.ct_clip[0]))),
        transform=transform,
        seed=data_seed,
    )
    sampler = DatasetBalancedSampler(
        [case.dataset for case in cases],
        alpha=alpha,
        num_samples=iterations_per_epoch * batch_size,
        seed=seed,
        num_replicas=num_replicas,
        rank=rank,
    )
    loader = DataLoader(
        patches,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_patches,
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        drop_last=True,
    )
    return loader, patches, sampler


def rank_seed(seed: int, rank: int) -> int:
    """Return the seed of one rank's crops and augmentation, different for every rank.

    Args:
        seed: Seed of the run.
        rank: Rank of the process.

    Returns:
        A seed in [0, 2**32) mixed from both with :class:`numpy.random.SeedSequence`.

    Example:
        >>> rank_seed(0, 0) == rank_seed(0, 0), rank_seed(0, 0) == rank_seed(0, 1)
        (True, False)
    """
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_worker(worker_id: int) -> None:
    """Reseed a DataLoader worker's patch generator, Python and NumPy from its torch seed."""
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(info.seed)
    random.seed(info.seed)
    np.random.seed(info.seed % 2**32)
