"""Reading prediction inputs and rejecting bad ones with clear errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from partialseg.data.io import ImageReadError
from partialseg.inference import list_cases, load_image
from partialseg.inference.inputs import check_image


def test_array_gets_spacing_reversed():
    image = load_image(np.zeros((4, 5, 6), np.int16), spacing=(3.0, 2.0, 1.0))
    assert image.GetSize() == (6, 5, 4)
    assert image.GetSpacing() == (1.0, 2.0, 3.0)
    assert image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_array_without_spacing_rejected():
    with pytest.raises(ValueError, match=r"pass spacing=\(z, y, x\)"):
        load_image(np.zeros((4, 5, 6)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, float("nan"), 1.0)])
def test_array_invalid_spacing_rejected(spacing):
    with pytest.raises(ValueError, match="spacing must be three positive values"):
        load_image(np.zeros((4, 5, 6)), spacing=spacing)


@pytest.mark.parametrize("shape", [(5, 6), (2, 4, 5, 6)], ids=["2d", "4d"])
def test_array_wrong_dimension_rejected(shape):
    with pytest.raises(ValueError, match="must be 3D"):
        load_image(np.zeros(shape), spacing=(1.0, 1.0, 1.0))


def test_array_of_strings_rejected():
    with pytest.raises(TypeError, match="integers or floats"):
        load_image(np.full((2, 2, 2), "a"), spacing=(1.0, 1.0, 1.0))


def test_nan_voxels_rejected():
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="contains 1 NaN and 0 infinite voxels"):
        load_image(array, spacing=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinite_voxels_rejected(dtype):
    array = np.zeros((4, 5, 6), dtype)
    array[0, 0, 0] = np.inf
    array[3, 4, 5] = -np.inf
    with pytest.raises(ValueError, match="contains 0 NaN and 2 infinite voxels"):
        load_image(array, spacing=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_voxels_in_file_rejected(tmp_path, suffix, dtype):
    # ITK's NIfTI reader returns NaN and infinity as 0, so NIfTI files are
    # scanned separately; NRRD and MHA keep the values for check_image.
    array = np.zeros((4, 5, 6), dtype)
    array[2, 2, 2] = np.inf
    array[1, 0, 3] = np.nan
    path = tmp_path / f"bad{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(ValueError, match="contains 1 NaN and 1 infinite voxels"):
        load_image(path)


def test_finite_float_nifti_reads(tmp_path):
    array = np.linspace(-1000, 1000, 120, dtype=np.float32).reshape(4, 5, 6)
    path = tmp_path / "ok.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert np.array_equal(sitk.GetArrayFromImage(load_image(path)), array)


def test_spacing_for_image_rejected():
    with pytest.raises(ValueError, match="applies to numpy arrays only"):
        load_image(sitk.Image([4, 4, 4], sitk.sitkInt16), spacing=(1.0, 1.0, 1.0))


def test_unsupported_type_rejected():
    with pytest.raises(TypeError, match="got list"):
        load_image([[[0]]])


def test_missing_file_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        load_image(tmp_path / "missing.nii.gz")


def test_corrupt_file_rejected(tmp_path):
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    with pytest.raises(ImageReadError, match="could not read"):
        load_image(path)


def test_truncated_file_rejected(tmp_path):
    path = tmp_path / "ct.nii.gz"
    noise = np.random.default_rng(0).integers(-1000, 1000, (32, 32, 32), dtype=np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(noise), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        load_image(path)


@pytest.mark.parametrize("size", [[8, 8], [4, 4, 4, 3]], ids=["2d", "4d"])
def test_file_wrong_dimension_rejected(tmp_path, size):
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(sitk.Image(size, sitk.sitkInt16), str(path))
    with pytest.raises(ImageReadError, match="single-channel 3D"):
        load_image(path)


def test_vector_image_rejected():
    image = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)
    with pytest.raises(ValueError, match="3 components"):
        check_image(image)


def test_cases_from_images_ts(tmp_path):
    for name in ["lung_002_0000.nii.gz", "lung_001_0000.nii.gz", ".hidden_0000.nii.gz"]:
        (tmp_path / name).touch()
    cases = list_cases(tmp_path)
    assert [case.name for case in cases] == ["lung_001", "lung_002"]
    assert cases[0].path == tmp_path / "lung_001_0000.nii.gz"


def test_cases_second_channel_rejected(tmp_path):
    for name in ["lung_001_0000.nii.gz", "lung_001_0001.nii.gz"]:
        (tmp_path / name).touch()
    with pytest.raises(ValueError, match="channel 0001 of case 'lung_001'"):
        list_cases(tmp_path)


def test_cases_keep_plain_names(tmp_path):
    for name in ["scan_2020.nrrd", "other.mha"]:
        (tmp_path / name).touch()
    assert [case.name for case in list_cases(tmp_path)] == ["other", "scan_2020"]


def test_cases_single_file_strips_channel(tmp_path):
    path = tmp_path / "abdomen_0000.nii.gz"
    path.touch()
    assert list_cases(path)[0].name == "abdomen"


def test_cases_empty_folder_rejected(tmp_path):
    (tmp_path / "notes.txt").touch()
    with pytest.raises(ValueError, match="no images found"):
        list_cases(tmp_path)


def test_cases_missing_input_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        list_cases([tmp_path / "nothing"])


def test_cases_duplicate_names_rejected(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "ct.nii.gz").touch()
    (tmp_path / "b" / "ct.nrrd").touch()
    with pytest.raises(ValueError, match="two inputs give the case name 'ct'"):
        list_cases([tmp_path / "a" / "ct.nii.gz", tmp_path / "b" / "ct.nrrd"])


@pytest.mark.realdata
def test_cases_dicom_folder(data_root):
    folder = data_root / "totalseg" / "example_ct_dicom"
    cases = list_cases(folder)
    assert [case.name for case in cases] == ["example_ct_dicom"]
    assert load_image(cases[0].path).GetSize() == (512, 512, 20)


@pytest.mark.realdata
def test_cases_folder_with_dicom_subfolder(data_root):
    cases = list_cases(data_root / "totalseg")
    names = [case.name for case in cases]
    assert "example_ct_dicom" in names
    assert "example_ct" in names


def test_empty_array_rejected():
    with pytest.raises(ValueError, match=r"is empty: its size \(x, y, z\) is \(10, 10, 0\)"):
        load_image(np.zeros((0, 10, 10), np.float32), spacing=(1.0, 1.0, 1.0))


def test_tensor_rejected_before_spacing():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"got Tensor; convert a torch tensor"):
        load_image(torch.zeros(3, 3, 3), spacing=(1.0, 1.0, 1.0))


def test_folder_listing_prints_no_gdcm_warning(tmp_path, capfd):
    (tmp_path / "a.nii.gz").touch()
    assert [case.name for case in list_cases(tmp_path)] == ["a"]
    assert "No Series were found" not in capfd.readouterr().err
