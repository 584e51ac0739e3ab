"""Reading images and nnU-Net raw datasets, and the errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from partialseg.data.cases import ct_statistics, load_case, load_cases, median_spacing
from partialseg.data.io import (
    GeometryMismatchError,
    ImageReadError,
    check_same_grid,
    read_image,
    write_image,
)
from partialseg.data.nnunet import Case, read_raw_dataset
from partialseg.labels import LabelRegistry
from partialseg.training import build_registry


def _copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_read_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        read_image(tmp_path / "missing.nii.gz")


def test_read_image_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(ImageReadError, match=r"broken\.nii\.gz"):
        read_image(path)


def test_read_image_truncated_file(tmp_path: Path, data_root: Path) -> None:
    source = data_root / "openkbp" / "pt_20" / "ct.nii.gz"
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(source.read_bytes()[:5000])
    with pytest.raises(ImageReadError, match=r"truncated\.nii\.gz"):
        read_image(path)


def test_read_image_rejects_2d(tmp_path: Path) -> None:
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkInt16), str(path))
    with pytest.raises(ImageReadError, match="3D"):
        read_image(path)


def test_read_dicom_series(data_root: Path) -> None:
    image = read_image(data_root / "totalseg" / "example_ct_dicom")
    assert image.GetSize() == (512, 512, 20)
    assert image.GetSpacing()[2] == pytest.approx(2.0, abs=0.01)


def test_write_image_round_trip_keeps_geometry(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    write_image(image, tmp_path / "out.nii.gz")
    result = read_image(tmp_path / "out.nii.gz")
    check_same_grid(image, result)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(image))
    assert not list(tmp_path.glob(".tmp-*"))


def test_check_same_grid_names_property_and_values() -> None:
    image = sitk.Image([4, 4, 4], sitk.sitkInt16)
    label = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    label.SetOrigin((0.0, 0.0, 5.0))
    with pytest.raises(GeometryMismatchError, match=r"origin \(0.0, 0.0, 5.0\)"):
        check_same_grid(image, label, label_name="lbl.nii.gz")


def test_raw_dataset_reads_cases(data_root: Path) -> None:
    dataset = read_raw_dataset(data_root / "collection" / "DatasetF_OKBPfull")
    assert dataset.name == "DatasetF_OKBPfull"
    assert len(dataset.cases) == 10
    assert dataset.labels["Esophagus"] == 5


def test_raw_dataset_missing_label_file(tmp_path: Path, data_root: Path) -> None:
    root = _copy_dataset(data_root / "collection" / "DatasetG_RadiomicsLungLesion", tmp_path / "G")
    removed = sorted((root / "labelsTr").iterdir())[0]
    removed.unlink()
    with pytest.raises(FileNotFoundError, match=removed.name):
        read_raw_dataset(root)


def test_raw_dataset_missing_dataset_json(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataset\.json"):
        read_raw_dataset(tmp_path)


def test_raw_dataset_empty(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    with pytest.raises(ValueError, match="no training cases"):
        read_raw_dataset(tmp_path)


def test_raw_dataset_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_raw_dataset(tmp_path)


def test_load_case_undeclared_label_value(synthetic_collection: list[Path], tmp_path: Path) -> None:
    root = _copy_dataset(synthetic_collection[1], tmp_path / "S2")
    dataset = read_raw_dataset(root)
    case = dataset.cases[0]
    label = sitk.ReadImage(str(case.label_path))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 9
    corrupted = sitk.GetImageFromArray(array)
    corrupted.CopyInformation(label)
    sitk.WriteImage(corrupted, str(case.label_path))
    registry = build_registry([dataset])
    with pytest.raises(ValueError, match=r"9") as error:
        load_case(case, (3.0, 2.5, 2.5), registry)
    assert case.label_path.name in str(error.value)


def test_load_case_mismatched_grid(synthetic_collection: list[Path], tmp_path: Path) -> None:
    root = _copy_dataset(synthetic_collection[2], tmp_path / "S3")
    dataset = read_raw_dataset(root)
    case = dataset.cases[0]
    label = sitk.ReadImage(str(case.label_path))
    label.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(label, str(case.label_path))
    with pytest.raises(GeometryMismatchError, match="spacing"):
        load_case(case, (3.0, 2.5, 2.5), build_registry([dataset]))


def test_load_case_nan_intensities(synthetic_collection: list[Path], tmp_path: Path) -> None:
    # ITK's NIfTI reader turns NaN into 0, so the NaN case arrives through MHA files.
    dataset = read_raw_dataset(synthetic_collection[2])
    source = dataset.cases[0]
    image = sitk.Cast(sitk.ReadImage(str(source.image_path)), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[3, 3, 3] = np.nan
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    sitk.WriteImage(broken, str(tmp_path / "ct.mha"))
    sitk.WriteImage(sitk.ReadImage(str(source.label_path)), str(tmp_path / "label.mha"))
    case = Case("nan_case", dataset.name, tmp_path / "ct.mha", tmp_path / "label.mha")
    with pytest.raises(ValueError, match="NaN") as error:
        load_case(case, (3.0, 2.5, 2.5), build_registry([dataset]))
    assert "ct.mha" in str(error.value)


def test_load_cases_resamples_to_spacing(synthetic_collection: list[Path]) -> None:
    dataset = read_raw_dataset(synthetic_collection[0])
    cases = load_cases(dataset.cases, (6.0, 5.0, 5.0), build_registry([dataset]), progress=False)
    assert cases[0].image.shape == (16, 32, 32)
    assert cases[0].label.shape == (16, 32, 32)
    assert set(cases[0].foreground) == {1, 2, 3}


def test_ct_statistics_on_synthetic_tissue(synthetic_collection: list[Path]) -> None:
    dataset = read_raw_dataset(synthetic_collection[0])
    cases = load_cases(dataset.cases, (3.0, 2.5, 2.5), build_registry([dataset]), progress=False)
    (lower, upper), mean, std = ct_statistics(cases)
    # Labelled tissue is drawn at 15 to 60 HU with noise of sd 15 HU.
    assert -60 < lower < 15
    assert 60 < upper < 120
    assert 30 < mean < 60
    assert 10 < std < 40


def test_build_registry_rejects_duplicate_names(synthetic_collection: list[Path]) -> None:
    dataset = read_raw_dataset(synthetic_collection[0])
    with pytest.raises(ValueError, match="appears twice"):
        build_registry([dataset, dataset])


def test_read_image_truncated_uncompressed_nifti(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.ones((8, 8, 8), dtype=np.int16))
    sitk.WriteImage(image, str(tmp_path / "full.nii"))
    data = (tmp_path / "full.nii").read_bytes()
    (tmp_path / "half.nii").write_bytes(data[: len(data) // 2])
    assert read_image(tmp_path / "full.nii").GetSize() == (8, 8, 8)
    with pytest.raises(ImageReadError, match=r"half\.nii is truncated"):
        read_image(tmp_path / "half.nii")


def test_load_case_label_values_above_255(tmp_path: Path) -> None:
    shape = (6, 8, 8)
    image = sitk.GetImageFromArray(np.zeros(shape, dtype=np.int16))
    label_array = np.zeros(shape, dtype=np.int16)
    label_array[1:3, 2:4, 2:4] = 257
    label_array[3:5, 4:6, 4:6] = 1
    label = sitk.GetImageFromArray(label_array)
    write_image(image, tmp_path / "ct.nii.gz")
    write_image(label, tmp_path / "label.nii.gz")
    registry = LabelRegistry()
    registry.add_dataset("D", {"spleen": [1], "kidney": [257]})
    case = Case("c", "D", tmp_path / "ct.nii.gz", tmp_path / "label.nii.gz")
    loaded = load_case(case, (1.0, 1.0, 1.0), registry)
    assert sorted(np.unique(loaded.label).tolist()) == [0, 1, 257]


def test_load_case_accepts_whole_number_float_labels(tmp_path: Path) -> None:
    shape = (4, 6, 6)
    label_array = np.zeros(shape, dtype=np.float32)
    label_array[1:3, 1:3, 1:3] = 2.0
    write_image(sitk.GetImageFromArray(np.zeros(shape, dtype=np.int16)), tmp_path / "ct.nii.gz")
    write_image(sitk.GetImageFromArray(label_array), tmp_path / "label.nii.gz")
    registry = LabelRegistry()
    registry.add_dataset("D", {"liver": [2]})
    case = Case("c", "D", tmp_path / "ct.nii.gz", tmp_path / "label.nii.gz")
    assert set(np.unique(load_case(case, (1.0, 1.0, 1.0), registry).label)) == {0, 2}

    label_array[0, 0, 0] = 0.5
    write_image(sitk.GetImageFromArray(label_array), tmp_path / "label.nii.gz")
    with pytest.raises(ValueError, match=r"label\.nii\.gz is a label map with non-integer"):
        load_case(case, (1.0, 1.0, 1.0), registry)


def test_median_spacing_names_corrupt_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken_0000.nii"
    broken.write_bytes(b"not an image")
    case = Case("broken", "D", broken, broken)
    with pytest.raises(ImageReadError, match=r"broken_0000\.nii"):
        median_spacing([case])


def test_load_case_nan_in_nifti(synthetic_collection: list[Path], tmp_path: Path) -> None:
    root = _copy_dataset(synthetic_collection[2], tmp_path / "S3")
    dataset = read_raw_dataset(root)
    case = dataset.cases[0]
    image = sitk.Cast(sitk.ReadImage(str(case.image_path)), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[3, 3, 3] = np.nan
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    sitk.WriteImage(broken, str(case.image_path))
    with pytest.raises(ImageReadError, match="1 NaN and 0 infinite voxels") as error:
        load_case(case, (3.0, 2.5, 2.5), build_registry([dataset]))
    assert case.image_path.name in str(error.value)


def test_load_case_background_only_label_logged(
    synthetic_collection: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _copy_dataset(synthetic_collection[1], tmp_path / "S2")
    dataset = read_raw_dataset(root)
    case = dataset.cases[0]
    label = sitk.ReadImage(str(case.label_path))
    empty = sitk.Image(label.GetSize(), label.GetPixelID())
    empty.CopyInformation(label)
    sitk.WriteImage(empty, str(case.label_path))
    with caplog.at_level("WARNING", logger="partialseg.data.cases"):
        load_case(case, (3.0, 2.5, 2.5), build_registry([dataset]))
    assert "contains only background" in caplog.text
    assert case.label_path.name in caplog.text


def test_raw_dataset_unused_files_logged(
    synthetic_collection: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _copy_dataset(synthetic_collection[0], tmp_path / "S1")
    first = sorted((root / "imagesTr").glob("*_0000.nii.gz"))[0]
    shutil.copyfile(first, first.with_name(first.name.replace("_0000", "_0001")))
    shutil.copyfile(next((root / "labelsTr").iterdir()), root / "labelsTr" / "orphan.nii.gz")
    with caplog.at_level("WARNING", logger="partialseg.data.nnunet"):
        dataset = read_raw_dataset(root)
    assert "orphan" not in [case.name for case in dataset.cases]
    assert "1 files that are not channel 0000" in caplog.text
    assert "1 label maps without an image" in caplog.text
    assert "orphan.nii.gz" in caplog.text


def test_raw_dataset_without_unused_files_is_silent(
    synthetic_collection: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="partialseg.data.nnunet"):
        read_raw_dataset(synthetic_collection[0])
    assert caplog.text == ""


def test_dicom_series_with_missing_slice(data_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    shutil.copytree(data_root / "totalseg" / "example_ct_dicom", folder)
    files = sorted(
        (path for path in folder.iterdir() if path.name.startswith("CT")),
        key=lambda path: float(sitk.ReadImage(str(path)).GetMetaData("0020|0032").split("\\")[2]),
    )
    files[10].unlink()
    with pytest.raises(ImageReadError, match="not evenly spaced") as error:
        read_image(folder)
    assert "2 mm apart" in str(error.value)
    assert "4 mm apart" in str(error.value)
