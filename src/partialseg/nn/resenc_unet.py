"""U-Net with a residual encoder and per-class heads with bias.

The encoder starts with a bias-free 3x3(x3) convolution, InstanceNorm and
LeakyReLU, followed by stages of residual blocks. A block computes
``act(norm2(conv2(act(norm1(conv1(x))))) + shortcut(x))``, where ``conv1``
carries the stage's stride in the first block of a stage. The shortcut is the
identity, or a strided bias-free 1x1(x1) convolution plus InstanceNorm when the
block changes the shape. ``norm2`` starts with zero weight, so every block
starts as its shortcut. The decoder has one bias-free convolution per stage.
This is the residual-encoder U-Net that MultiTalent (Ulrich et al., MICCAI 2023)
trained with nnU-Net v1.

NOTE: the key names and shapes match the published checkpoint, but the order of
operations inside a block has not been compared with outputs of the published
network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.blocks import (
    LEAKY_SLOPE,
    ConvNormAct,
    UNetDecoder,
    check_input_size,
    conv_type,
    expand_per_stage,
    init_he_,
    instance_norm,
    resolve_class_names,
)
from partialseg.nn.heads import ClassHeads
from partialseg.nn.registry import multitalent_class_names, multitalent_plans, register_model

__all__ = ["ResEncUNet", "ResidualBlock", "multitalent_resenc_unet", "resenc_unet"]


class ResidualBlock(nn.Module):
    """Basic residual block: two convolutions and a shortcut, LeakyReLU after the sum.

    Args:
        in_channels: Input feature channels.
        out_channels: Output feature channels.
        kernel_size: Kernel size per axis.
        stride: Stride of the first convolution and of the shortcut, per axis.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        *,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        conv = conv_type(spatial_dims)
        padding = [k // 2 for k in kernel_size]
        self.conv1 = conv(
            in_channels, out_channels, tuple(kernel_size), tuple(stride), padding, bias=False
        )
        self.norm1 = instance_norm(spatial_dims, out_channels)
        self.conv2 = conv(out_channels, out_channels, tuple(kernel_size), 1, padding, bias=False)
        self.norm2 = instance_norm(spatial_dims, out_channels)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels or any(s != 1 for s in stride):
            projection = conv(in_channels, out_channels, 1, tuple(stride), bias=False)
            self.shortcut = nn.Sequential(projection, instance_norm(spatial_dims, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the residual block."""
        residual = self.shortcut(x)
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + residual)


class _ResidualEncoder(nn.Module):
    """Stem convolution and residual stages; returns the output of every stage."""

    def __init__(self, in_channels, features, strides, kernels, blocks_per_stage, spatial_dims):
        super().__init__()
        stem_kernel = [3] * spatial_dims
        ones = [1] * spatial_dims
        self.stem = ConvNormAct(
            in_channels, features[0], stem_kernel, ones, bias=False, spatial_dims=spatial_dims
        )
        stages = []
        channels = features[0]
        for out_channels, stride, kernel, count in zip(
            features, strides, kernels, blocks_per_stage, strict=True
        ):
            options = {"kernel_size": kernel, "spatial_dims": spatial_dims}
            blocks = [ResidualBlock(channels, out_channels, stride=stride, **options)]
            for _ in range(count - 1):
                blocks.append(ResidualBlock(out_channels, out_channels, stride=ones, **options))
            stages.append(nn.Sequential(*blocks))
            channels = out_channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResEncUNet(SegmentationNetwork):
    """U-Net with a residual encoder; outputs one sigmoid logit channel per class.

    Args:
        in_channels: Input image channels.
        class_names: Output class names; alternatively give ``num_classes``.
        num_classes: Number of classes, named ``class_0``, ``class_1``, ...
        features_per_stage: Feature channels of each encoder stage.
        strides: Downsampling stride of each stage, as one int, one int per stage
            or one per-axis sequence per stage.
        kernel_sizes: Convolution kernel size of each stage, in the same forms.
        blocks_per_stage: Residual blocks of each encoder stage.
        n_conv_per_stage_decoder: Convolutions per decoder stage.
        spatial_dims: 2 or 3.
        deep_supervision: Return the logits of every decoder stage instead of
            only the full-resolution logits.
        architecture: Name stored in the saved config; set by the model registry.

    The class heads have a bias term. The input's spatial size must be divisible
    by the product of the strides along each axis.

    Example:
        >>> import torch
        >>> net = ResEncUNet(num_classes=2, features_per_stage=[4, 8], strides=[1, 2],
        ...                  blocks_per_stage=[1, 2])
        >>> [tuple(out.shape) for out in net(torch.zeros(1, 1, 4, 4, 4))]
        [(1, 2, 4, 4, 4)]
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
        blocks_per_stage: Sequence[int] = (1, 3, 4, 6, 6, 6),
        n_conv_per_stage_decoder: int = 1,
        spatial_dims: int = 3,
        deep_supervision: bool = True,
        architecture: str = "resenc_unet",
    ) -> None:
        names = resolve_class_names(class_names, num_classes)
        features = [int(f) for f in features_per_stage]
        num_stages = len(features)
        if num_stages < 2:
            raise ValueError(f"features_per_stage needs at least 2 stages, got {features}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")

        blocks = [int(b) for b in blocks_per_stage]
        if len(blocks) != num_stages or min(blocks) < 1:
            raise ValueError(
                f"blocks_per_stage must give a positive block count for each of the "
                f"{num_stages} stages, got {list(blocks_per_stage)}"
            )
        expand = {"num_stages": num_stages, "spatial_dims": spatial_dims}
        stride_list = expand_per_stage(strides, name="strides", **expand)
        kernel_list = expand_per_stage(kernel_sizes, name="kernel_sizes", **expand)

        model_args = {
            "in_channels": int(in_channels),
            "features_per_stage": features,
            "strides": stride_list,
            "kernel_sizes": kernel_list,
            "blocks_per_stage": blocks,
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

        self.encoder = _ResidualEncoder(
            in_channels, features, stride_list, kernel_list, blocks, spatial_dims
        )
        self.decoder = UNetDecoder(
            features,
            stride_list,
            kernel_list,
            n_conv_per_stage_decoder,
            spatial_dims,
            conv_bias=False,
        )
        init_he_(self.encoder)
        init_he_(self.decoder)
        for module in self.encoder.modules():
            if isinstance(module, ResidualBlock):
                nn.init.zeros_(module.norm2.weight)
        self.heads = ClassHeads(features[:-1], names, spatial_dims=spatial_dims, bias=True)
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


@register_model("resenc_unet")
def resenc_unet(*, class_names: list[str] | None, **kwargs: Any) -> ResEncUNet:
    """Build a small 3D residual-encoder U-Net: 4 stages with 16 to 128 features by default.

    Example:
        >>> resenc_unet(class_names=["liver"]).model_args["blocks_per_stage"]
        [1, 2, 2, 2]
    """
    options: dict[str, Any] = {
        "features_per_stage": [16, 32, 64, 128],
        "strides": [1, 2, 2, 2],
        "kernel_sizes": 3,
        "blocks_per_stage": [1, 2, 2, 2],
    }
    options.update(kwargs)
    if class_names is None and "num_classes" not in options:
        raise ValueError("resenc_unet has no default classes; pass classes=<names or count>")
    return ResEncUNet(class_names=class_names, architecture="resenc_unet", **options)


@register_model("multitalent_resenc_unet")
def multitalent_resenc_unet(*, class_names: list[str] | None, **kwargs: Any) -> ResEncUNet:
    """Build the published MultiTalent residual-encoder U-Net (47 classes by default).

    The topology comes from the ``MultiTalent_resenc_bs4_plans_3D`` plans. It has
    six stages with 30, 60, 120, 240, 320 and 320 features and strides (1, 1, 1),
    (1, 2, 2) and four times (2, 2, 2). Kernels are 1x3x3 in the first stage and
    3x3x3 after, with residual blocks (1, 2, 3, 4, 4, 4) and one convolution per
    decoder stage. It has 69,335,475 parameters with 47 classes.
    """
    plans = multitalent_plans("resenc")
    stage_plans = plans["plans_per_stage"]["1"]
    options: dict[str, Any] = {
        "in_channels": plans["num_modalities"],
        "features_per_stage": [30, 60, 120, 240, 320, 320],
        "strides": stage_plans["pool_op_kernel_sizes"],
        "kernel_sizes": stage_plans["conv_kernel_sizes"],
        "blocks_per_stage": stage_plans["num_blocks_encoder"],
        "n_conv_per_stage_decoder": 1,
    }
    options.update(kwargs)
    names = multitalent_class_names() if class_names is None else class_names
    return ResEncUNet(class_names=names, architecture="multitalent_resenc_unet", **options)
