"""Networks built around encoders from other libraries: timm (2D) and MONAI's SwinUNETR (3D).

``swinunetr`` is registered only when MONAI is installed
(``pip install partialseg[swinunetr]``); MONAI itself is imported when the
network is built.
"""

import importlib.util

from partialseg.nn.adapters.timm_unet import TimmUNet2d

__all__ = ["TimmUNet2d"]

if importlib.util.find_spec("monai") is not None:
    from partialseg.nn.adapters.swin_unetr import SwinUNETRNetwork

    __all__ += ["SwinUNETRNetwork"]
