"""2D U-Net with a timm encoder and per-class heads on every decoder stage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.blocks import check_input_size, conv_stage, init_he_, resolve_class_names
from partialseg.nn.heads import ClassHeads
from partialseg.nn.registry import register_model

__all__ = ["TimmUNet2d", "timm_unet_2d"]


class _UpsampleDecoder(nn.Module):
    """Bilinear upsampling, concatenation with the skip, and two convolutions per stage.

    Stage ``i`` works at the resolution of encoder feature ``-2 - i``. When the
    first encoder feature is below the input resolution, a last stage upsamples
    to the input size without a skip.
    """

    def __init__(self, encoder_channels, decoder_channels, *, final_stage):
        super().__init__()
        skips = list(encoder_channels[-2::-1])
        in_channels = encoder_channels[-1]
        stages = []
        for skip_channels, out_channels in zip(skips, decoder_channels, strict=False):
            stages.append(self._stage(in_channels + skip_channels, out_channels))
            in_channels = out_channels
        if final_stage:
            stages.append(self._stage(in_channels, decoder_channels[-1]))
        self.stages = nn.ModuleList(stages)
        self.num_skips = len(skips)

    @staticmethod
    def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
        return conv_stage(in_channels, out_channels, [3, 3], [1, 1], num_convs=2, spatial_dims=2)

    def forward(self, features: list[Tensor], input_size: Sequence[int]) -> list[Tensor]:
        """Return the decoder outputs, highest resolution first."""
        x = features[-1]
        outputs = []
        for i, stage in enumerate(self.stages):
            if i < self.num_skips:
                skip = features[-2 - i]
                x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
                x = torch.cat([x, skip], dim=1)
            else:
                x = F.interpolate(x, size=tuple(input_size), mode="bilinear", align_corners=False)
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]


class TimmUNet2d(SegmentationNetwork):
    """2D U-Net whose encoder is any timm model that supports ``features_only=True``.

    The decoder upsamples bilinearly, concatenates the encoder feature of the
    same resolution and applies two Conv -> InstanceNorm -> LeakyReLU blocks.
    If the encoder's first feature map is smaller than the input (stride 2 for
    ResNets), a last decoder stage brings the features back to the input size.

    Args:
        encoder: timm model name, for example ``"resnet18"`` or ``"convnext_tiny"``.
        in_channels: Input image channels.
        class_names: Output class names; alternatively give ``num_classes``.
        num_classes: Number of classes, named ``class_0``, ``class_1``, ...
        decoder_channels: Output channels of each decoder stage, lowest resolution
            first. None uses the channels of the encoder feature each stage joins,
            and half of the first feature's channels for the last stage.
        pretrained: Load timm's pretrained encoder weights (downloads them). It is
            not stored in ``model_args``, so rebuilding a saved network never
            downloads.
        deep_supervision: Return the logits of every decoder stage instead of
            only the full-resolution logits.
        architecture: Name stored in the saved config; set by the model registry.

    Example:
        >>> net = TimmUNet2d(encoder="test_resnet", num_classes=2)
        >>> [tuple(out.shape) for out in net(torch.zeros(1, 3, 64, 64))][:2]
        [(1, 2, 64, 64), (1, 2, 32, 32)]
    """

    def __init__(
        self,
        *,
        encoder: str = "resnet18",
        in_channels: int = 3,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        decoder_channels: Sequence[int] | None = None,
        pretrained: bool = False,
        deep_supervision: bool = True,
        architecture: str = "timm_unet_2d",
    ) -> None:
        import timm

        names = resolve_class_names(class_names, num_classes)
        backbone = timm.create_model(
            encoder, features_only=True, pretrained=pretrained, in_chans=in_channels
        )
        encoder_channels = list(backbone.feature_info.channels())
        reductions = list(backbone.feature_info.reduction())
        final_stage = reductions[0] > 1
        num_stages = len(encoder_channels) - 1 + int(final_stage)
        channels = self._decoder_channels(decoder_channels, encoder_channels, num_stages)
        model_args: dict[str, Any] = {
            "encoder": encoder,
            "in_channels": int(in_channels),
            "decoder_channels": channels,
            "deep_supervision": bool(deep_supervision),
        }
        super().__init__(
            architecture=architecture,
            model_args=model_args,
            class_names=names,
            deep_supervision=deep_supervision,
        )
        self.encoder = backbone
        self.decoder = _UpsampleDecoder(encoder_channels, channels, final_stage=final_stage)
        init_he_(self.decoder)
        self.heads = ClassHeads(channels[::-1], names, spatial_dims=2)
        self.size_divisor = [max(reductions)] * 2

    @staticmethod
    def _decoder_channels(
        requested: Sequence[int] | None, encoder_channels: list[int], num_stages: int
    ) -> list[int]:
        if requested is None:
            channels = encoder_channels[-2::-1]
            return channels + [max(encoder_channels[0] // 2, 8)] * (num_stages - len(channels))
        channels = [int(c) for c in requested]
        if len(channels) != num_stages or min(channels) < 1:
            raise ValueError(
                f"decoder_channels must give {num_stages} positive channel counts for this "
                f"encoder (one per decoder stage, lowest resolution first), got {list(requested)}"
            )
        return channels

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        """Compute class logits.

        Args:
            x: Input of shape ``(batch, in_channels, height, width)``.

        Returns:
            With ``deep_supervision`` a list of logits, one per decoder stage,
            highest resolution first; otherwise only the full-resolution logits.
        """
        check_input_size(x, self.size_divisor, spatial_dims=2)
        features = self.decoder(self.encoder(x), x.shape[2:])
        logits = self.heads(features, levels=None if self.deep_supervision else 1)
        return logits if self.deep_supervision else logits[0]


@register_model("timm_unet_2d")
def timm_unet_2d(*, class_names: list[str] | None, **kwargs: Any) -> TimmUNet2d:
    """Build a 2D U-Net on a timm encoder (``resnet18`` unless ``encoder`` is given)."""
    if class_names is None and "num_classes" not in kwargs:
        raise ValueError("timm_unet_2d has no default classes; pass classes=<names or count>")
    return TimmUNet2d(class_names=class_names, architecture="timm_unet_2d", **kwargs)
