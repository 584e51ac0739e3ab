"""Plain convolutional U-Net with nnU-Net topology rules and per-class heads.

Every stage is ``n`` times Conv (with bias) -> InstanceNorm (eps 1e-5, affine) ->
LeakyReLU (slope 0.01). The first convolution of every stage but the first
downsamples with its stride, the decoder upsamples with bias-free transposed
convolutions whose kernel equals the stride, and skip connections are
concatenated after the upsampled features. This is the topology of the plain
U-Net of nnU-Net (Isensee et al., Nature Methods 2021) used by MultiTalent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.heads import ClassHeads
from partialseg.nn.registry import multitalent_class_names, multitalent_plans, register_model

__all__ = [
    "ConvNormAct",
    "PlainUNet",
    "Topology",
    "expand_per_stage",
    "plan_topology",
    "resolve_class_names",
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
) -> nn.Sequential:
    """Stack ``num_convs`` :class:`ConvNormAct` blocks; only the first one is strided."""
    ones = [1] * spatial_dims
    blocks = [
        ConvNormAct(in_channels, out_channels, kernel_size, stride, spatial_dims=spatial_dims)
    ]
    for _ in range(num_convs - 1):
        blocks.append(
            ConvNormAct(out_channels, out_channels, kernel_size, ones, spatial_dims=spatial_dims)
        )
    return nn.Sequential(*blocks)


class _PlainEncoder(nn.Module):
    def __init__(self, in_channels, features, strides, kernels, num_convs, spatial_dims):
        super().__init__()
        stages = []
        for out_channels, stride, kernel in zip(features, strides, kernels, strict=True):
            stage = conv_stage(
                in_channels,
                out_channels,
                kernel,
                stride,
                num_convs=num_convs,
                spatial_dims=spatial_dims,
            )
            stages.append(stage)
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class _PlainDecoder(nn.Module):
    """Decoder stage ``u`` upsamples from encoder stage ``S-1-u`` to ``S-2-u``."""

    def __init__(self, features, strides, kernels, num_convs, spatial_dims):
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

    This is the initialisation of nnU-Net (Isensee et al., Nature Methods 2021).
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(layer.weight, a=negative_slope)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class PlainUNet(SegmentationNetwork):
    """Plain U-Net whose outputs are one sigmoid logit channel per class.

    Args:
        in_channels: Input image channels.
        class_names: Output class names; alternatively give ``num_classes``.
        num_classes: Number of classes, named ``class_0``, ``class_1``, ...
        features_per_stage: Feature channels of each encoder stage.
        strides: Downsampling stride of each stage (the first is usually 1), as
            one int, one int per stage or one per-axis sequence per stage.
        kernel_sizes: Convolution kernel size of each stage, in the same forms.
        n_conv_per_stage: Convolutions per encoder stage.
        n_conv_per_stage_decoder: Convolutions per decoder stage.
        spatial_dims: 2 or 3.
        deep_supervision: Return the logits of every decoder stage instead of
            only the full-resolution logits.
        architecture: Name stored in the saved config; set by the model registry.

    The input's spatial size must be divisible by the product of the strides
    along each axis.

    Example:
        >>> net = PlainUNet(class_names=["liver", "spleen"], features_per_stage=[4, 8, 16],
        ...                 strides=[1, 2, 2], kernel_sizes=3)
        >>> [tuple(out.shape) for out in net(torch.zeros(1, 1, 8, 8, 8))]
        [(1, 2, 8, 8, 8), (1, 2, 4, 4, 4)]
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        features_per_stage: Sequence[int] = (32, 64, 128, 256, 320, 320),
        strides: int | Sequence[int] | Sequence[Sequence[int]] = (1, 2, 2, 2, 2, 2),
        kernel_sizes: int | Sequence[int] | Sequence[Sequence[int]] = 3,
        n_conv_per_stage: int = 2,
        n_conv_per_stage_decoder: int = 2,
        spatial_dims: int = 3,
        deep_supervision: bool = True,
        architecture: str = "plain_unet",
    ) -> None:
        names = resolve_class_names(class_names, num_classes)
        features = [int(f) for f in features_per_stage]
        num_stages = len(features)
        if num_stages < 2:
            raise ValueError(f"features_per_stage needs at least 2 stages, got {features}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        stride_list = expand_per_stage(
            strides, num_stages=num_stages, spatial_dims=spatial_dims, name="strides"
        )
        kernel_list = expand_per_stage(
            kernel_sizes, num_stages=num_stages, spatial_dims=spatial_dims, name="kernel_sizes"
        )
        model_args = {
            "in_channels": int(in_channels),
            "features_per_stage": features,
            "strides": stride_list,
            "kernel_sizes": kernel_list,
            "n_conv_per_stage": int(n_conv_per_stage),
            "n_conv_per_stage_decoder": int(n_conv_per_stage_decoder),
            "spatial_dims": spatial_dims,
            "deep_supervision": bool(deep_supervision),
        }
        super().__init__(
            architecture=architecture,
            model_args=model_args,
            class_names=names,
            deep_supervision=deep_supervision,
        )
        self.encoder = _PlainEncoder(
            in_channels, features, stride_list, kernel_list, n_conv_per_stage, spatial_dims
        )
        self.decoder = _PlainDecoder(
            features, stride_list, kernel_list, n_conv_per_stage_decoder, spatial_dims
        )
        init_he_(self.encoder)
        init_he_(self.decoder)
        self.heads = ClassHeads(features[:-1], names, spatial_dims=spatial_dims)
        self.size_divisor = [math.prod(axis) for axis in zip(*stride_list, strict=True)]

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        """Compute class logits.

        Args:
            x: Input of shape ``(batch, in_channels, *spatial)``.

        Returns:
            With ``deep_supervision`` a list of logits, one per decoder stage,
            highest resolution first; otherwise only the full-resolution logits.
        """
        check_input_size(x, self.size_divisor, spatial_dims=self.model_args["spatial_dims"])
        features = self.decoder(self.encoder(x))
        logits = self.heads(features, levels=None if self.deep_supervision else 1)
        return logits if self.deep_supervision else logits[0]


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


@dataclasses.dataclass
class Topology:
    """Network topology derived from a patch size and voxel spacing.

    Attributes:
        patch_size: The patch size, rounded up to be divisible by the strides.
        strides: Stride of each stage, per axis; the first stage has stride 1.
        kernel_sizes: Kernel size of each stage, per axis.
        features_per_stage: Feature channels of each stage.
    """

    patch_size: list[int]
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    features_per_stage: list[int]

    def model_args(self) -> dict[str, Any]:
        """Return the keyword arguments for :class:`PlainUNet` or ``create_model``."""
        return {
            "features_per_stage": list(self.features_per_stage),
            "strides": [list(s) for s in self.strides],
            "kernel_sizes": [list(k) for k in self.kernel_sizes],
        }


def plan_topology(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    *,
    min_feature_map_size: int = 4,
    max_stages: int | None = None,
    base_features: int = 32,
    max_features: int = 320,
) -> Topology:
    """Derive strides and kernel sizes from a patch size and spacing, nnU-Net style.

    At every step, each axis is halved when it stays at least
    ``min_feature_map_size`` voxels long and its current spacing is less than
    twice the smallest current spacing of the axes that can still be halved. An
    axis gets kernel size 3 once its current spacing is less than twice the
    smallest current spacing, and 1 before that, so strongly anisotropic axes are
    not convolved across until the other axes have caught up. Features double
    per stage from ``base_features`` up to ``max_features``.

    Args:
        patch_size: Patch size in voxels, one entry per spatial axis.
        spacing: Voxel spacing in mm, same axis order.
        min_feature_map_size: Smallest allowed size of the lowest-resolution feature map.
        max_stages: Stop adding stages at this number.
        base_features: Feature channels of the first stage.
        max_features: Upper bound of the feature channels.

    Returns:
        The topology. Its ``patch_size`` is rounded up to a multiple of the stride
        product along each axis.

    Raises:
        ValueError: If the patch size and spacing have different lengths or invalid values.

    Example:
        >>> topology = plan_topology((96, 192, 192), (1.5, 1.0, 1.0), base_features=30)
        >>> topology.strides
        [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
        >>> topology.features_per_stage
        [30, 60, 120, 240, 320, 320]
    """
    sizes = [float(s) for s in patch_size]
    current = [float(s) for s in spacing]
    if len(sizes) != len(current) or len(sizes) not in (2, 3):
        raise ValueError(
            "patch_size and spacing must both have 2 or 3 entries, "
            f"got {patch_size!r} and {spacing!r}"
        )
    if min(sizes) < 1 or min(current) <= 0:
        raise ValueError(
            f"patch_size and spacing must be positive, got {patch_size!r} and {spacing!r}"
        )
    dims = len(sizes)
    has_full_kernel = [False] * dims
    strides, kernels = [[1] * dims], []

    def next_kernel() -> list[int]:
        smallest = min(current)
        for axis in range(dims):
            has_full_kernel[axis] |= current[axis] / smallest < 2
        return [3 if full else 1 for full in has_full_kernel]

    kernels.append(next_kernel())
    while max_stages is None or len(strides) < max_stages:
        poolable = [a for a in range(dims) if sizes[a] / 2 >= min_feature_map_size]
        if not poolable:
            break
        smallest = min(current[a] for a in poolable)
        stride = [2 if a in poolable and current[a] / smallest < 2 else 1 for a in range(dims)]
        for axis in range(dims):
            sizes[axis] /= stride[axis]
            current[axis] *= stride[axis]
        strides.append(stride)
        kernels.append(next_kernel())

    divisor = [math.prod(axis) for axis in zip(*strides, strict=True)]
    rounded = [math.ceil(int(p) / d) * d for p, d in zip(patch_size, divisor, strict=True)]
    features = [min(base_features * 2**i, max_features) for i in range(len(strides))]
    return Topology(rounded, strides, kernels, features)


@register_model("plain_unet")
def plain_unet(*, class_names: list[str] | None, **kwargs: Any) -> PlainUNet:
    """Build a small 3D plain U-Net: 4 stages with 16 to 128 features unless overridden.

    Example:
        >>> net = plain_unet(class_names=["liver"])
        >>> net.model_args["features_per_stage"]
        [16, 32, 64, 128]
    """
    options: dict[str, Any] = {
        "features_per_stage": [16, 32, 64, 128],
        "strides": [1, 2, 2, 2],
        "kernel_sizes": 3,
    }
    options.update(kwargs)
    if class_names is None and "num_classes" not in options:
        raise ValueError("plain_unet has no default classes; pass classes=<names or count>")
    return PlainUNet(class_names=class_names, architecture="plain_unet", **options)


@register_model("multitalent_unet")
def multitalent_unet(*, class_names: list[str] | None, **kwargs: Any) -> PlainUNet:
    """Build the published MultiTalent plain U-Net (47 classes unless ``class_names`` is given).

    Six stages with 30, 60, 120, 240, 320 and 320 features, strides 1, 2, 2, 2,
    2 and (1, 2, 2), 3x3x3 kernels, two convolutions per stage and bias-free heads,
    from the ``MultiTalent_bs4_plans_3D`` plans. It has 29,319,560 parameters
    with 47 classes.
    """
    plans = multitalent_plans("plain")
    stage_plans = plans["plans_per_stage"]["1"]
    options: dict[str, Any] = {
        "in_channels": plans["num_modalities"],
        "features_per_stage": [30, 60, 120, 240, 320, 320],
        "strides": [[1, 1, 1], *stage_plans["pool_op_kernel_sizes"]],
        "kernel_sizes": stage_plans["conv_kernel_sizes"],
        "n_conv_per_stage": plans["conv_per_stage"],
        "n_conv_per_stage_decoder": plans["conv_per_stage"],
    }
    options.update(kwargs)
    names = multitalent_class_names() if class_names is None else class_names
    return PlainUNet(class_names=names, architecture="multitalent_unet", **options)
