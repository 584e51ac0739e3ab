"""Prediction geometry on real CT stored in different orientations and formats."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from partialseg.inference import Predictor, predict_to_folder

from .conftest import make_unet, rotated_direction
from .reference import reference_probabilities

pytestmark = pytest.mark.realdata

CLASSES = ["D01/liver", "D01/spleen", "D02/aorta"]


def oblique(image: sitk.Image) -> sitk.Image:
    rotated = sitk.Image(image)
    rotated.SetDirection(rotated_direction(20.0))
    return rotated


ORIENTATIONS = {
    "ras": lambda image: image,
    "lps": lambda image: sitk.DICOMOrient(image, "LPS"),
    "oblique": oblique,
}


def sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    """Return the voxel-to-RAS affine of ``image`` (SimpleITK uses LPS)."""
    affine = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def assert_same_geometry(received: sitk.Image, expected: sitk.Image) -> None:
    assert received.GetSize() == expected.GetSize()
    assert np.allclose(received.GetSpacing(), expected.GetSpacing(), atol=1e-6)
    assert np.allclose(received.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    assert np.allclose(received.GetDirection(), expected.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_orientation_matches_reference(small_ct, orientation):
    image = ORIENTATIONS[orientation](small_ct[20:85, 30:86, :])
    network = make_unet(CLASSES, spacing=(2.0, 4.5, 4.5), patch_size=(16, 32, 32))
    # float32 sums, so that no voxel within float16 rounding of 0.5 can differ.
    predictor = Predictor(network, progress=False, accumulate_dtype=torch.float32)
    masks = predictor.predict(image)
    reference = reference_probabilities(network, image)
    for name in CLASSES:
        assert_same_geometry(masks[name], image)
        expected = (reference[name] >= 0.5).astype(np.uint8)
        received = sitk.GetArrayFromImage(masks[name])
        assert np.array_equal(received, expected), f"{name}: {(received != expected).sum()} voxels"


def test_oblique_moves_only_geometry(small_ct):
    image = small_ct[20:85, 30:86, :]
    network = make_unet(CLASSES, spacing=(2.0, 4.5, 4.5), patch_size=(16, 32, 32))
    predictor = Predictor(network, progress=False)
    straight = predictor.predict(image)
    rotated = predictor.predict(oblique(image))
    for name in CLASSES:
        assert rotated[name].GetDirection() == pytest.approx(rotated_direction(20.0))
        assert np.array_equal(
            sitk.GetArrayFromImage(rotated[name]), sitk.GetArrayFromImage(straight[name])
        )


@pytest.mark.slow
def test_dicom_series_geometry(data_root, tmp_path):
    folder = data_root / "totalseg" / "example_ct_dicom"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    network = make_unet(CLASSES, spacing=(4.0, 4.0, 4.0), patch_size=(8, 64, 64))
    masks = Predictor(network, progress=False).predict(folder)
    for name in CLASSES:
        assert_same_geometry(masks[name], series)

    # The label map is stored y-flipped; resampled onto the prediction grid
    # through physical space, it must come out as the y-flipped array.
    label = sitk.ReadImage(str(folder.parent / "example_seg_dicom.nii.gz"))
    on_grid = sitk.Resample(label, masks[CLASSES[0]], sitk.Transform(), sitk.sitkNearestNeighbor)
    flipped = np.flip(sitk.GetArrayFromImage(label), axis=1)
    assert flipped.any()
    assert np.array_equal(sitk.GetArrayFromImage(on_grid), flipped)

    written = predict_to_folder(Predictor(network, progress=False), folder, tmp_path)
    assert [path.name for path in written] == ["example_ct_dicom"]
    path = written[0] / "D01__liver.nii.gz"
    from_nibabel = nib.load(path)
    assert np.allclose(from_nibabel.affine, sitk_affine_ras(series), atol=1e-3)
    nibabel_array = np.asarray(from_nibabel.dataobj).transpose(2, 1, 0)
    assert np.array_equal(nibabel_array, sitk.GetArrayFromImage(masks["D01/liver"]))


@pytest.mark.slow
def test_nrrd_input_geometry(data_root):
    path = data_root / "radiomics_lung" / "lung1_image.nrrd"
    image = sitk.ReadImage(str(path))
    network = make_unet(CLASSES, spacing=(5.0, 5.0, 5.0), patch_size=(16, 32, 32))
    masks = Predictor(network, progress=False).predict(path)
    for name in CLASSES:
        assert_same_geometry(masks[name], image)
    assert any(sitk.GetArrayViewFromImage(mask).any() for mask in masks.values())


def test_written_masks_read_alike(small_ct, tmp_path):
    image = sitk.DICOMOrient(small_ct[20:85, 30:86, :], "LPS")
    sitk.WriteImage(image, str(tmp_path / "case_0000.nii.gz"))
    network = make_unet(CLASSES, spacing=(3.0, 4.5, 4.5), patch_size=(16, 32, 32))
    predict_to_folder(
        Predictor(network, progress=False), tmp_path / "case_0000.nii.gz", tmp_path / "out"
    )
    for stem in ["D01__liver", "D01__spleen", "D02__aorta"]:
        path = tmp_path / "out" / "case" / f"{stem}.nii.gz"
        from_sitk = sitk.ReadImage(str(path))
        from_nibabel = nib.load(path)
        assert_same_geometry(from_sitk, image)
        assert from_nibabel.get_data_dtype() == np.uint8
        assert np.allclose(from_nibabel.affine, sitk_affine_ras(from_sitk), atol=1e-4)
        nibabel_array = np.asarray(from_nibabel.dataobj).transpose(2, 1, 0)
        assert np.array_equal(nibabel_array, sitk.GetArrayFromImage(from_sitk))
