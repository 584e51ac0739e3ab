"""Reading, preprocessing and sampling of CT volumes and label maps."""

from partialseg.data.preprocessing import Preprocessing, resample_image

__all__ = ["Preprocessing", "resample_image"]
