"""MONAI's SwinUNETR (Hatamizadeh et al., BrainLes 2021) with per-class heads.

The per-class heads replace SwinUNETR's output convolution and read the five
decoder outputs, so the network supports deep supervision like the U-Nets.
MONAI is imported when the network is built.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.blocks import check_input_size, resolve_class_names
from partialseg.nn.heads import ClassHeads
from partialseg.nn.registry import register_model

__all__ = ["SwinUNETRNetwork", "swinunetr"]

# SwinUNETR downsamples by its patch size 2 once and then by 2 in four merging steps.
SIZE_DIVISOR = 32


class SwinUNETRNetwork(SegmentationNetwork):
    """SwinUNETR backbone from MONAI with one sigmoid logit channel per class.

    Args:
        in_channels: Input image channels.
        class_names: Output class names; alternatively give ``num_classes``.
        num_classes: Number of classes, named ``class_0``, ``class_1``, ...
        feature_size: Feature channels of the first stage; MONAI requires a
            multiple of 12.
        depths: Swin transformer blocks per stage.
        num_heads: Attention heads per stage.
        spatial_dims: 2 or 3.
        use_v2: Use SwinUNETR-v2 (residual convolution blocks before each stage).
        deep_supervision: Return the logits of every decoder stage instead of
            only the full-resolution logits.
        architecture: Name stored in the saved config; set by the model registry.

    Raises:
        ImportError: If MONAI is not installed.

    The input's spatial size must be divisible by 32.

    NOTE: checked with MONAI 1.6.1 only. MONAI before 1.5 requires an ``img_size``
    argument, which is not passed here.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        spatial_dims: int = 3,
        use_v2: bool = False,
        deep_supervision: bool = True,
        architecture: str = "swinunetr",
    ) -> None:
        try:
            from monai.networks.nets import SwinUNETR
        except ImportError as error:
            raise ImportError(
                "the swinunetr network needs MONAI; install it with "
                "`pip install partialseg[swinunetr]`"
            ) from error

        names = resolve_class_names(class_names, num_classes)
        model_args: dict[str, Any] = {
            "in_channels": int(in_channels),
            "feature_size": int(feature_size),
            "depths": [int(d) for d in depths],
            "num_heads": [int(h) for h in num_heads],
            "spatial_dims": int(spatial_dims),
            "use_v2": bool(use_v2),
            "deep_supervision": bool(deep_supervision),
        }
        super().__init__(
            architecture=architecture,
            model_args=model_args,
            class_names=names,
            deep_supervision=deep_supervision,
        )
        self.backbone = SwinUNETR(
            in_channels=in_channels,
            out_channels=1,
            feature_size=feature_size,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            spatial_dims=spatial_dims,
            use_v2=use_v2,
        )
        # The per-class heads below replace SwinUNETR's own output convolution.
        self.backbone.out = nn.Identity()
        channels = [
            feature_size,
            feature_size,
            2 * feature_size,
            4 * feature_size,
            8 * feature_size,
        ]
        self.heads = ClassHeads(channels, names, spatial_dims=spatial_dims)

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        """Compute class logits.

        Args:
            x: Input of shape ``(batch, in_channels, *spatial)``.

        Returns:
            With ``deep_supervision`` five logits tensors, at 1, 1/2, 1/4, 1/8
            and 1/16 of the input size; otherwise only the full-resolution logits.
        """
        spatial_dims = self.model_args["spatial_dims"]
        check_input_size(x, [SIZE_DIVISOR] * spatial_dims, spatial_dims=spatial_dims)
        features = self._decode(x)
        logits = self.heads(features, levels=None if self.deep_supervision else 1)
        return logits if self.deep_supervision else logits[0]

    def _decode(self, x: Tensor) -> list[Tensor]:
        # The steps of SwinUNETR.forward in MONAI 1.6.1, keeping every decoder output.
        net = self.backbone
        hidden = net.swinViT(x, net.normalize)
        enc0 = net.encoder1(x)
        enc1 = net.encoder2(hidden[0])
        enc2 = net.encoder3(hidden[1])
        enc3 = net.encoder4(hidden[2])
        dec4 = net.encoder10(hidden[4])
        dec3 = net.decoder5(dec4, hidden[3])
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        dec0 = net.decoder2(dec1, enc1)
        out = net.decoder1(dec0, enc0)
        return [out, dec0, dec1, dec2, dec3]


def swinunetr(*, class_names: list[str] | None, **kwargs: Any) -> SwinUNETRNetwork:
    """Build MONAI's SwinUNETR with per-class heads (feature size 48 unless overridden)."""
    if class_names is None and "num_classes" not in kwargs:
        raise ValueError("swinunetr has no default classes; pass classes=<names or count>")
    return SwinUNETRNetwork(class_names=class_names, architecture="swinunetr", **kwargs)


# Registered only with MONAI installed, so that list_models() names only networks
# that can be built, even when this module is imported directly.
if importlib.util.find_spec("monai") is not None:
    register_model("swinunetr")(swinunetr)
