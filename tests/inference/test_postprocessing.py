"""Body mask and largest-component post-processing on real CT."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from partialseg.inference import Predictor, body_mask, keep_largest_component
from partialseg.inference.postprocessing import axial_axis, resolve_postprocessing

from .conftest import make_unet, rotated_direction

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def chest(data_root):
    """The full 3 mm abdominal and lower chest CT (122 x 101 x 112 voxels, RAS storage)."""
    return sitk.ReadImage(str(data_root / "totalseg" / "example_ct.nii.gz"))


def test_body_mask_fills_lungs(chest):
    body = body_mask(chest)
    hu = sitk.GetArrayFromImage(chest)
    assert body.dtype == np.uint8
    assert body.shape == hu.shape
    assert body[:, 0, 0].sum() == 0
    assert body[:, -1, -1].sum() == 0
    centre = body[:, hu.shape[1] // 2, hu.shape[2] // 2]
    assert centre.mean() > 0.9
    # Lung and bowel gas are below the threshold but inside the body outline.
    assert np.count_nonzero(body.astype(bool) & (hu < -500)) > 10_000
    assert 0.2 < body.mean() < 0.9


def test_body_mask_ignores_separate_objects(chest):
    array = sitk.GetArrayFromImage(chest)
    array[:, :3, :3] = 500
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(chest)
    assert body_mask(image)[:, :3, :3].sum() == 0


def test_axial_axis_follows_direction():
    image = sitk.Image([4, 4, 4], sitk.sitkInt16)
    assert axial_axis(image) == 0
    image.SetDirection((1, 0, 0, 0, 0, 1, 0, 1, 0))
    assert axial_axis(image) == 1
    image.SetDirection(rotated_direction(20.0))
    assert axial_axis(image) == 0


def test_largest_component_keeps_one():
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[0:2, 0:2, 0:2] = 1
    mask[3:6, 3:6, 3:6] = 1
    kept = keep_largest_component(mask)
    assert kept.sum() == 27
    assert kept[4, 4, 4] == 1
    assert kept[0, 0, 0] == 0


def test_largest_component_of_empty_mask():
    assert keep_largest_component(np.zeros((3, 3, 3), np.uint8)).sum() == 0


def test_postprocessing_order_is_fixed():
    assert resolve_postprocessing("largest_component") == ("largest_component",)
    assert resolve_postprocessing(["largest_component", "body"]) == ("body", "largest_component")
    assert resolve_postprocessing(None) == ()


def test_predict_body_clips_masks(chest):
    image = chest[:, :, 40:70]
    network = make_unet(["D01/everything"], spacing=(6.0, 6.0, 6.0), patch_size=(16, 32, 32))
    with torch.no_grad():
        network.heads.bias[0].fill_(100.0)
    predictor = Predictor(network, progress=False)
    unclipped = sitk.GetArrayFromImage(predictor.predict(image)["D01/everything"])
    clipped = predictor.predict(image, postprocess="body")["D01/everything"]
    assert unclipped.all()
    assert np.array_equal(sitk.GetArrayFromImage(clipped), body_mask(image))


def test_predict_largest_component(chest):
    image = chest[:, :, 40:70]
    network = make_unet(["a", "b", "c"], spacing=(6.0, 6.0, 6.0), patch_size=(16, 32, 32))
    predictor = Predictor(network, progress=False)
    plain = predictor.predict(image)
    cleaned = predictor.predict(image, postprocess=["largest_component"])
    for name in ["a", "b", "c"]:
        components = sitk.ConnectedComponentImageFilter()
        components.SetFullyConnected(True)
        components.Execute(cleaned[name])
        assert components.GetObjectCount() <= 1
        kept = sitk.GetArrayFromImage(cleaned[name]).astype(bool)
        assert not (kept & ~sitk.GetArrayFromImage(plain[name]).astype(bool)).any()
