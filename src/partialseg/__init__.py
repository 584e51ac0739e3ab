"""partialseg: one segmentation network for many partially labeled datasets."""

__version__ = "0.1.0.dev0"
