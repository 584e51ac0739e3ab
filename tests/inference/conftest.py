"""Small real networks and real CT images for the prediction tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from partialseg.data.preprocessing import Preprocessing
from partialseg.nn import ClassHeads, SegmentationNetwork, create_model

CT_NORMALIZATION = {"ct_clip": (-1000.0, 1000.0), "ct_mean": 0.0, "ct_std": 300.0}


def make_unet(
    class_names: Sequence[str],
    *,
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    patch_size: Sequence[int] = (16, 32, 32),
    seed: int = 0,
    sharpness: float = 8.0,
    head_bias: bool = True,
) -> SegmentationNetwork:
    """Build a two-stage plain U-Net with biased heads whose classes fire on different fractions.

    Random weights give logits of about +-1; multiplying them by ``sharpness``
    makes the probabilities nearly binary, like those of a trained network, and
    biases from -6 to 6 make some classes cover little and some much of the image.
    Without ``head_bias`` the heads stay bias-free like those of ``create_model``,
    so the network can be saved and loaded with the hub functions.
    """
    torch.manual_seed(seed)
    network = create_model(
        "plain_unet",
        classes=list(class_names),
        features_per_stage=[4, 8],
        strides=[1, 2],
        deep_supervision=False,
    )
    heads = ClassHeads(network.heads.in_channels, list(class_names), bias=head_bias)
    with torch.no_grad():
        for weight in heads.weight:
            weight.mul_(sharpness)
        for bias in heads.bias if head_bias else []:
            bias.copy_(torch.linspace(-6.0, 6.0, len(class_names)))
    network.heads = heads
    network.preprocessing = Preprocessing(
        spacing=tuple(spacing), patch_size=tuple(patch_size), **CT_NORMALIZATION
    )
    return network.eval()


class TinyConvNet(SegmentationNetwork):
    """A network without per-class heads: one 3x3x3 convolution and a 1x1x1 output layer."""

    def __init__(self, class_names: Sequence[str], *, seed: int = 0) -> None:
        super().__init__(
            architecture="tiny_conv",
            model_args={},
            class_names=list(class_names),
            deep_supervision=False,
        )
        torch.manual_seed(seed)
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.out = nn.Conv3d(4, len(class_names), 1)
        with torch.no_grad():
            self.out.weight.mul_(8.0)
            self.out.bias.copy_(torch.linspace(-2.0, 2.0, len(class_names)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.conv(x)))


@pytest.fixture
def unet() -> SegmentationNetwork:
    """A 4-class plain U-Net with MultiTalent-style class names."""
    return make_unet(["D01/liver", "D01/spleen", "D02/liver", "D02/aorta"])


@pytest.fixture(scope="session")
def small_ct(data_root: Path) -> sitk.Image:
    """A 30-slice abdominal CT crop (122 x 101 x 30 voxels, 3 mm, RAS storage)."""
    return sitk.ReadImage(str(data_root / "totalseg" / "example_ct_sm.nii.gz"))


def rotated_direction(angle_degrees: float = 20.0) -> tuple[float, ...]:
    """Return a direction matrix rotated about the y and z axes (an oblique acquisition)."""
    angle = np.deg2rad(angle_degrees)
    about_z = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    about_y = np.array(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    )
    return tuple((about_z @ about_y).ravel())
