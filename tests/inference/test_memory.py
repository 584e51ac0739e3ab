"""Peak memory of streaming prediction does not grow with classes times volume."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk

from partialseg.inference import Predictor
from partialseg.inference import sliding_window as sliding_window_module

from .conftest import TinyConvNet, make_unet

PATCH = (16, 32, 32)


def tall_volume(depth: int) -> sitk.Image:
    """A synthetic CT-like column of ``depth`` x 32 x 32 voxels at 4 mm, the network spacing."""
    rng = np.random.default_rng(0)
    array = rng.normal(40.0, 200.0, (depth, 32, 32)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    return image


@pytest.fixture
def accumulators(monkeypatch):
    """Record every accumulator the sliding window creates."""
    created = []
    original = sliding_window_module.SlabAccumulator

    def recording(*args, **kwargs):
        accumulator = original(*args, **kwargs)
        created.append(accumulator)
        return accumulator

    monkeypatch.setattr(sliding_window_module, "SlabAccumulator", recording)
    return created


def test_accumulator_holds_one_slab(accumulators):
    classes = [f"D01/class_{i}" for i in range(12)]
    network = make_unet(classes, spacing=(4.0, 4.0, 4.0), patch_size=PATCH)
    image = tall_volume(96)
    Predictor(network, progress=False).predict(image)

    assert len(accumulators) == 1
    buffer = accumulators[0].buffer
    assert tuple(buffer.shape) == (12, PATCH[0] + 1, 32, 32)
    whole_volume_bytes = len(classes) * image.GetNumberOfPixels() * 4
    assert accumulators[0].nbytes < whole_volume_bytes / 5


def traced_peak(predictor: Predictor, image: sitk.Image) -> int:
    tracemalloc.start()
    try:
        predictor.predict(image)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_numpy_peak_grows_by_packed_masks():
    # tracemalloc traces numpy buffers (input copies, packed and unpacked
    # masks) but not torch tensors, so the accumulator is checked above. A network without
    # heads keeps the network activations small next to the outputs.
    image = tall_volume(96)
    voxels = image.GetNumberOfPixels()
    peaks = {}
    for count in (2, 34):
        network = TinyConvNet([f"D01/class_{i}" for i in range(count)])
        network.preprocessing = make_unet(
            ["a"], spacing=(4.0, 4.0, 4.0), patch_size=PATCH
        ).preprocessing
        peaks[count] = traced_peak(Predictor(network, progress=False), image)

    bytes_per_class_and_voxel = (peaks[34] - peaks[2]) / 32 / voxels
    # Bit-packed masks need 1/8 byte per class and voxel; a float32 volume per
    # class would need 4.
    assert bytes_per_class_and_voxel < 0.5
    assert peaks[34] < 34 * voxels * 4 / 4
