"""Plain convolutional U-Net with nnU-Net topology rules and per-class heads.

Every stage is ``n`` times Conv (with bias) -> InstanceNorm (eps 1e-5, affine) ->
LeakyReLU (slope 0.01). The first convolution of every stage but the first
downsamples with its stride, the decoder upsamples with bias-free transposed
convolutions whose kernel equals the stride, and skip connections are
concatenated after the upsampled features. This is the topology of the plain
U-Net of nnU-Net (Isensee et al., Nature Methods 2021) used by MultiTalent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.blocks import (
    UNetDecoder,
    check_input_size,
    conv_stage,
    expand_per_stage,
    init_he_,
    resolve_class_names,
)
from partialseg.nn.heads import ClassHeads
from partialseg.nn.registry import multitalent_class_names, multitalent_plans, register_model

__all__ = ["PlainUNet", "multitalent_unet", "plain_unet"]


class _PlainEncoder(nn.Module):
    """Stacks of :class:`ConvNormAct`; returns the output of every stage."""

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
        >>> import torch
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
        self.decoder = UNetDecoder(
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


@register_model("plain_unet")
def plain_unet(*, class_names: list[str] | None, **kwargs: Any) -> PlainUNet:
    """Build a small 3D plain U-Net: 4 stages with 16 to 128 features unless overridden.

    Without ``strides``, the first stage keeps the resolution and every further
    stage halves it, for as many stages as ``features_per_stage`` has.

    Example:
        >>> net = plain_unet(class_names=["liver"])
        >>> net.model_args["features_per_stage"]
        [16, 32, 64, 128]
        >>> plain_unet(class_names=["liver"], features_per_stage=[8, 16, 32]).model_args["strides"]
        [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    """
    features = list(kwargs.get("features_per_stage", [16, 32, 64, 128]))
    options: dict[str, Any] = {
        "features_per_stage": features,
        "strides": [1] + [2] * (len(features) - 1),
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
