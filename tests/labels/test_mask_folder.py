"""Registries built from per-class mask folders, on synthetic and real masks."""

import numpy as np
import pytest
import SimpleITK as sitk

from partialseg.labels import LabelRegistry


def write_mask(path, array, spacing=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def mask_folder(tmp_path):
    mask = np.zeros((2, 3, 4), dtype=np.uint8)
    mask[0, 1, 1] = 1
    for case, classes in {"s01": ["liver", "aorta"], "s02": ["liver"], "s03": []}.items():
        (tmp_path / case / "segmentations").mkdir(parents=True)
        for name in classes:
            write_mask(tmp_path / case / "segmentations" / f"{name}.nii.gz", mask)
    (tmp_path / "notes").mkdir()
    return tmp_path


def test_classes_are_sorted_union(mask_folder):
    registry, _ = LabelRegistry.from_mask_folder(mask_folder, dataset_name="TS")
    assert registry.class_names == ["TS/aorta", "TS/liver"]
    assert registry.dataset("TS").classes == {"aorta": (1,), "liver": (2,)}


def test_missing_file_means_not_annotated(mask_folder):
    _, case_classes = LabelRegistry.from_mask_folder(mask_folder, dataset_name="TS")
    assert case_classes == {"s01": ["TS/aorta", "TS/liver"], "s02": ["TS/liver"], "s03": []}


def test_case_classes_give_annotated_rows(mask_folder):
    registry, case_classes = LabelRegistry.from_mask_folder(mask_folder, dataset_name="TS")
    assert registry.class_mask(case_classes["s02"]).tolist() == [False, True]
    assert registry.class_mask(case_classes["s03"]).tolist() == [False, False]


def test_validate_accepts_binary_masks(mask_folder):
    registry, _ = LabelRegistry.from_mask_folder(mask_folder, dataset_name="TS", validate=True)
    assert registry.num_classes == 2


def test_validate_rejects_non_binary_mask(mask_folder):
    write_mask(mask_folder / "s02" / "segmentations" / "liver.nii.gz", np.full((2, 3, 4), 3))
    with pytest.raises(
        ValueError, match=r"liver\.nii\.gz: mask of class 'liver' must contain only"
    ):
        LabelRegistry.from_mask_folder(mask_folder, dataset_name="TS", validate=True)


def test_validate_rejects_mismatched_grid(mask_folder):
    write_mask(
        mask_folder / "s01" / "segmentations" / "liver.nii.gz",
        np.zeros((2, 3, 4)),
        spacing=(2.0, 1.0, 1.0),
    )
    with pytest.raises(ValueError, match="resample the masks of a case onto one grid"):
        LabelRegistry.from_mask_folder(mask_folder, dataset_name="TS", validate=True)


def test_folder_without_cases_raises(tmp_path):
    (tmp_path / "loose").mkdir()
    with pytest.raises(FileNotFoundError, match="no case folder"):
        LabelRegistry.from_mask_folder(tmp_path, dataset_name="TS")


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        LabelRegistry.from_mask_folder(tmp_path / "absent", dataset_name="TS")


@pytest.mark.realdata
def test_real_per_class_masks(data_root, tmp_path):
    source = data_root / "totalseg" / "example_seg_fast_per_class"
    chosen = ["liver", "spleen", "aorta"]
    for name in chosen:
        link = tmp_path / "example" / "segmentations" / f"{name}.nii.gz"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source / f"{name}.nii.gz")
    registry, case_classes = LabelRegistry.from_mask_folder(
        tmp_path, dataset_name="TS", validate=True
    )
    assert registry.class_names == ["TS/aorta", "TS/liver", "TS/spleen"]
    assert case_classes == {"example": registry.class_names}
