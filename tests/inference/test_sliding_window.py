"""Window placement, weights, the slab accumulator and the axis maps, on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from partialseg.inference._gaussian import gaussian_profile, window_starts
from partialseg.inference._grid import AxisMap, axis_maps
from partialseg.inference.sliding_window import SlabAccumulator, WindowGrid

from .conftest import rotated_direction


@pytest.mark.parametrize(
    ("size", "patch", "step", "expected"),
    [
        (10, 10, 0.5, [0]),
        (11, 10, 0.5, [0, 1]),
        (20, 10, 0.5, [0, 5, 10]),
        (21, 10, 0.5, [0, 4, 7, 11]),
        (20, 10, 1.0, [0, 10]),
    ],
)
def test_window_starts(size, patch, step, expected):
    assert window_starts(size, patch, step) == expected


def test_window_starts_short_axis_rejected():
    with pytest.raises(ValueError, match="shorter than the patch"):
        window_starts(5, 8, 0.5)


def test_gaussian_sigma_is_patch_over_eight():
    profile = gaussian_profile(16)
    distance = np.arange(16) - 7.5
    expected = np.exp(-0.5 * (distance / 2.0) ** 2)
    assert np.allclose(profile, expected / expected.max())


@pytest.mark.parametrize("gaussian", [True, False], ids=["gaussian", "constant"])
def test_window_weights_sum_to_one(gaussian):
    grid = WindowGrid.build((13, 9, 11), (6, 4, 8), step_size=0.5, gaussian=gaussian)
    total = np.zeros(grid.shape)
    for start in grid.windows():
        region = tuple(slice(s, s + p) for s, p in zip(start, grid.patch_size, strict=True))
        total[region] += grid.weight(start)
    assert np.allclose(total, 1.0, atol=1e-6)


def test_window_weights_prefer_centres():
    grid = WindowGrid.build((16, 8, 8), (8, 8, 8), step_size=0.5)
    weight = grid.weight((4, 0, 0))
    assert weight[4, 4, 4] > weight[0, 4, 4]


def test_accumulator_release_shifts_planes():
    accumulator = SlabAccumulator(1, 4, 1, 1, torch.float32)
    accumulator.add(torch.arange(1.0, 5.0).view(1, 4, 1, 1), (0, 0, 0))
    accumulator.release_below(2)
    assert accumulator.base == 2
    assert accumulator.buffer.flatten().tolist() == [3.0, 4.0, 0.0, 0.0]
    assert accumulator.planes(2, 4).flatten().tolist() == [3.0, 4.0]


def test_accumulator_rejects_released_planes():
    accumulator = SlabAccumulator(1, 4, 1, 1, torch.float32)
    accumulator.release_below(2)
    with pytest.raises(RuntimeError, match="outside the held planes"):
        accumulator.add(torch.ones(1, 2, 1, 1), (1, 0, 0))


def test_float16_accumulator_adds_in_float32():
    accumulator = SlabAccumulator(1, 1, 1, 1, torch.float16)
    for _ in range(3):
        accumulator.add(torch.full((1, 1, 1, 1), 0.1), (0, 0, 0))
    assert accumulator.buffer.item() == pytest.approx(0.3, abs=2e-4)


def test_axis_map_clamps_to_data():
    lower, upper, weight = AxisMap(scale=2.0, offset=1.0, low=1, high=5).neighbours(4)
    assert lower.tolist() == [1, 3, 5, 5]
    assert upper.tolist() == [2, 4, 5, 5]
    assert weight.tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_axis_maps_from_physical_space(direction):
    original = sitk.Image([10, 8, 6], sitk.sitkFloat32)
    original.SetSpacing((0.5, 1.0, 3.0))
    original.SetOrigin((4.0, -2.0, 7.0))
    if direction == "oblique":
        original.SetDirection(rotated_direction(30.0))
    network = sitk.Image([5, 8, 12], sitk.sitkFloat32)
    network.SetSpacing((1.0, 1.0, 1.5))
    network.SetOrigin(original.GetOrigin())
    network.SetDirection(original.GetDirection())
    z_map, y_map, x_map = axis_maps(original, network, padding=(2, 0, 1))
    assert z_map.scale == pytest.approx(2.0)
    assert z_map.offset == pytest.approx(2.0)
    assert (z_map.low, z_map.high) == (2, 13)
    assert y_map.scale == pytest.approx(1.0)
    assert x_map.scale == pytest.approx(0.5)
    assert x_map.offset == pytest.approx(1.0)


def test_axis_maps_reject_rotated_grids():
    original = sitk.Image([4, 4, 4], sitk.sitkFloat32)
    network = sitk.Image([4, 4, 4], sitk.sitkFloat32)
    network.SetDirection(rotated_direction(30.0))
    with pytest.raises(ValueError, match="share the input image's direction"):
        axis_maps(original, network, padding=(0, 0, 0))
