"""Convolution building blocks shared by the U-Nets, with nnU-Net defaults.

Convolutions use "same" padding, InstanceNorm uses eps 1e-5 with affine
parameters and LeakyReLU a negative slope of 0.01, the choices of nnU-Net
(Isensee et al., Nature Methods 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "LEAKY_SLOPE",
    "NORM_EPS",
    "ConvNormAct",
    "UNetDecoder",
    "check_input_size",
    "conv_stage",
    "conv_type",
    "expand_per_stage",
    "init_he_",
    "instance_norm",
    "resolve_class_names",
    "transposed_conv_type",
]

NORM_EPS = 1e-5
LEAKY_SLOPE = 1e-2


def conv_type(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """Return ``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def transposed_conv_type(
    spatial_dims: int,
) -> type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    """Return ``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


def instance_norm(spatial_dims: int, channels: int) -> nn.Module:
    """Build an affine instance norm with eps 1e-5."""
    norm_type = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims]
    return norm_type(channels, eps=NORM_EPS, affine=True)


class ConvNormAct(nn.Module):
    """Convolution -> InstanceNorm -> LeakyReLU, with "same" padding.

    Args:
        in_channels: Input feature channels.
        out_channels: Output feature channels.
        kernel_size: Kernel size per axis.
        stride: Stride per axis.
        bias: Give the convolution a bias term.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        *,
        bias: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        padding = [k // 2 for k in kernel_size]
        conv = conv_type(spatial_dims)
        self.conv = conv(
            in_channels, out_channels, tuple(kernel_size), tuple(stride), padding, bias=bias
        )
        self.norm = instance_norm(spatial_dims, out_channels)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Apply convolution, normalisation and activation."""
        return self.act(self.norm(self.conv(x)))


def expand_per_stage(
    value: int | Sequence[int] | Sequence[Sequence[int]],
    *,
    num_stages: int,
    spatial_dims: int,
    name: str,
) -> list[list[int]]:
    """Expand a stride or kernel-size specification to one list per stage and axis.

    Args:
        value: One int for every stage and axis, one entry per stage (an int or a
            per-axis sequence), or a full nested list.
        num_stages: Number of stages.
        spatial_dims: Number of spatial axes.
        name: Argument name for error messages.

    Returns:
        ``num_stages`` lists of ``spatial_dims`` ints.

    Raises:
        ValueError: If the number of stages or axes does not match.

    Example:
        >>> expand_per_stage([1, 2, (1, 2, 2)], num_stages=3, spatial_dims=3, name="strides")
        [[1, 1, 1], [2, 2, 2], [1, 2, 2]]
    """
    if isinstance(value, int):
        value = [value] * num_stages
    stages = list(value)
    if len(stages) != num_stages:
        raise ValueError(f"{name} must have one entry per stage ({num_stages}), got {value!r}")
    expanded = []
    for entry in stages:
        axes = [int(entry)] * spatial_dims if isinstance(entry, int) else [int(v) for v in entry]
        if len(axes) != spatial_dims or min(axes) < 1:
            raise ValueError(
                f"every entry of {name} must be a positive int or {spatial_dims} positive ints, "
                f"got {entry!r}"
            )
        expanded.append(axes)
    return expanded


def resolve_class_names(class_names: Sequence[str] | None, num_classes: int | None) -> list[str]:
    """Return explicit class names, or ``class_0``, ``class_1``, ... for a class count.

    Raises:
        ValueError: If neither or conflicting values are given.
    """
    if class_names is None:
        if num_classes is None or num_classes < 1:
            raise ValueError(
                f"pass class_names or a positive num_classes, got num_classes={num_classes!r}"
            )
        return [f"class_{i}" for i in range(num_classes)]
    names = list(class_names)
    if num_classes is not None and num_classes != len(names):
        raise ValueError(
            f"num_classes={num_classes} does not match the {len(names)} class_names given"
        )
    return names


def conv_stage(
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    *,
    num_convs: int,
    spatial_dims: int,
    bias: bool = True,
) -> nn.Sequential:
    """Stack ``num_convs`` :class:`ConvNormAct` blocks; only the first one is strided."""
    options = {"bias": bias, "spatial_dims": spatial_dims}
    ones = [1] * spatial_dims
    blocks = [ConvNormAct(in_channels, out_channels, kernel_size, stride, **options)]
    for _ in range(num_convs - 1):
        blocks.append(ConvNormAct(out_channels, out_channels, kernel_size, ones, **options))
    return nn.Sequential(*blocks)


class UNetDecoder(nn.Module):
    """U-Net decoder: transposed convolution, concatenation with the skip, convolutions.

    Decoder stage ``u`` upsamples from encoder stage ``S-1-u`` to ``S-2-u``, where
    ``S`` is the number of encoder stages, so stage 0 works at the lowest
    resolution. The transposed convolutions have no bias and a kernel equal to
    the stride of the encoder stage they undo.

    Args:
        features: Feature channels of each encoder stage.
        strides: Stride of each encoder stage, per axis.
        kernels: Kernel size of each encoder stage, per axis; decoder stage ``u``
            uses the kernel of encoder stage ``S-2-u``.
        num_convs: Convolutions per decoder stage.
        spatial_dims: 2 or 3.
        conv_bias: Give the decoder convolutions a bias term.
    """

    def __init__(self, features, strides, kernels, num_convs, spatial_dims, *, conv_bias=True):
        super().__init__()
        transposed = transposed_conv_type(spatial_dims)
        upsamples, stages = [], []
        for deep in range(len(features) - 1, 0, -1):
            skip = deep - 1
            stride = tuple(strides[deep])
            upsamples.append(transposed(features[deep], features[skip], stride, stride, bias=False))
            stage = conv_stage(
                2 * features[skip],
                features[skip],
                kernels[skip],
                [1] * spatial_dims,
                num_convs=num_convs,
                spatial_dims=spatial_dims,
                bias=conv_bias,
            )
            stages.append(stage)
        self.upsamples = nn.ModuleList(upsamples)
        self.stages = nn.ModuleList(stages)

    def forward(self, skips: list[Tensor]) -> list[Tensor]:
        """Return the decoder outputs, highest resolution first."""
        x = skips[-1]
        outputs = []
        for u, (upsample, stage) in enumerate(zip(self.upsamples, self.stages, strict=True)):
            x = torch.cat([upsample(x), skips[-2 - u]], dim=1)
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]


def init_he_(module: nn.Module, *, negative_slope: float = LEAKY_SLOPE) -> None:
    """Initialise conv weights with He normal init for LeakyReLU and zero their biases.

    This is ``InitWeights_He(1e-2)`` of nnU-Net's network library
    dynamic_network_architectures (checked in version 0.4.4).
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(layer.weight, a=negative_slope)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def check_input_size(x: Tensor, divisor: Sequence[int], *, spatial_dims: int) -> None:
    """Raise a ValueError unless ``x`` is ``(batch, channels, *spatial)`` with divisible sizes."""
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"expected input of shape (batch, channels, {spatial_dims} spatial axes), "
            f"got {tuple(x.shape)}"
        )
    spatial = x.shape[2:]
    if any(size % d for size, d in zip(spatial, divisor, strict=True)):
        raise ValueError(
            f"input spatial size {tuple(spatial)} must be divisible by {tuple(divisor)} "
            "(the product of the strides per axis); pad or crop the input"
        )
