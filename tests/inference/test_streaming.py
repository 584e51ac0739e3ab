"""Streaming prediction against a whole-volume reference on a real CT crop."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from partialseg.inference import Predictor
from partialseg.inference.sliding_window import WindowGrid

from .conftest import make_unet
from .reference import reference_probabilities

pytestmark = pytest.mark.realdata

CLASSES = ["D01/liver", "D01/spleen", "D02/liver", "D02/aorta"]

# (z, y, x) network spacings: z finer and x/y coarser than the 3 mm image, and
# the reverse. The first makes 45 network planes in five window rows, so the
# stream finishes a slab four times. On the 65 x 56 voxel crop, x and y get 43
# and 37 network voxels. That leaves the last input column and row beyond the
# last network voxel centre, where values are extended from the edge.
SPACINGS = {"z-finer": (2.0, 4.5, 4.5), "z-coarser": (5.0, 2.5, 2.5)}


@pytest.fixture(scope="module", params=list(SPACINGS), ids=list(SPACINGS))
def case(request, small_ct):
    image = small_ct[20:85, 30:86, :]
    network = make_unet(CLASSES, spacing=SPACINGS[request.param], patch_size=(16, 32, 32))
    return network, image, reference_probabilities(network, image)


def test_streaming_masks_match_reference(case):
    network, image, reference = case
    predictor = Predictor(network, progress=False, accumulate_dtype=torch.float32)
    masks, probabilities = predictor.predict(image, return_probabilities=True)
    for name in CLASSES:
        expected = (reference[name] >= 0.5).astype(np.uint8)
        received = sitk.GetArrayFromImage(masks[name])
        assert received.shape == expected.shape
        assert np.array_equal(received, expected), f"{name}: {(received != expected).sum()} voxels"
        # float16 output rounding is at most 2**-12 near 0.5 and 2**-11 near 1.
        difference = np.abs(probabilities[name].astype(np.float64) - reference[name])
        assert difference.max() < 5e-4, name


def test_streaming_covers_several_slabs(case):
    network, image, _ = case
    prep = network.preprocessing
    depth = round(image.GetSize()[2] * image.GetSpacing()[2] / prep.spacing[0])
    grid = WindowGrid.build((depth, 37, 43), prep.patch_size, step_size=0.5)
    assert len(grid.starts[0]) >= 2


def test_default_float16_changes_only_ties(case):
    network, image, reference = case
    predictor = Predictor(network, progress=False)
    assert predictor.accumulate_dtype == torch.float16
    masks = predictor.predict(image)
    changed_total = 0
    for name in CLASSES:
        expected = reference[name] >= 0.5
        changed = sitk.GetArrayFromImage(masks[name]).astype(bool) != expected
        changed_total += int(changed.sum())
        if changed.any():
            # The documented bound: 2**-13 per window, eight windows per voxel here.
            assert np.abs(reference[name][changed] - 0.5).max() < 8 * 2**-13, name
    assert changed_total < 1e-5 * image.GetNumberOfPixels() * len(CLASSES)
