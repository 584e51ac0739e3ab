"""Patch cropping, foreground oversampling and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from partialseg.data.augmentation import Augmentation
from partialseg.data.cases import LoadedCase
from partialseg.data.patches import PatchDataset, collate_patches


def _case(shape=(20, 30, 30)) -> LoadedCase:
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[2:4, 25:28, 1:3] = 2
    return LoadedCase("c", "D1", image, label, {2: np.argwhere(label == 2)})


def test_foreground_patches_contain_the_label() -> None:
    patches = PatchDataset([_case()], patch_size=(8, 8, 8), foreground_fraction=1.0, seed=1)
    for _ in range(20):
        assert (patches[0]["label"] == 2).any()


def test_random_patches_rarely_hit_small_label() -> None:
    patches = PatchDataset([_case()], patch_size=(8, 8, 8), foreground_fraction=0.0, seed=1)
    hits = sum(bool((patches[0]["label"] == 2).any()) for _ in range(100))
    assert hits < 50


def test_foreground_fraction_is_respected() -> None:
    patches = PatchDataset([_case()], patch_size=(4, 4, 4), foreground_fraction=1 / 3, seed=2)
    hits = sum(bool((patches[0]["label"] == 2).any()) for _ in range(600))
    # Centred patches always hit; random 4^3 crops of a 20x30x30 volume hit the
    # 2x3x2 label in about 1% of draws.
    assert 150 < hits < 260


def test_patch_larger_than_volume_is_padded() -> None:
    patches = PatchDataset([_case((4, 6, 6))], patch_size=(8, 8, 8), pad_value=-3.0)
    sample = patches[0]
    assert sample["image"].shape == (1, 8, 8, 8)
    assert float(sample["image"].min()) == -3.0


def test_collate_keeps_dataset_names() -> None:
    patches = PatchDataset([_case()], patch_size=(8, 8, 8))
    batch = collate_patches([patches[0], patches[0]])
    assert batch["image"].shape == (2, 1, 8, 8, 8)
    assert batch["label"].dtype == torch.uint8
    assert batch["dataset"] == ["D1", "D1"]


def test_empty_case_list_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one case"):
        PatchDataset([], patch_size=(8, 8, 8))


def test_augmentation_keeps_label_values() -> None:
    augment = Augmentation(probability=1.0, seed=0)
    label = torch.zeros(1, 16, 24, 24, dtype=torch.long)
    label[0, 4:12, 6:18, 6:18] = 3
    image = label.float()
    _, out_label = augment(image, label)
    assert set(out_label.unique().tolist()) <= {0, 3}
