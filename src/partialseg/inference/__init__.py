"""Whole-volume prediction: sliding window, streaming stitching, post-processing, writers."""

from partialseg.inference.inputs import Case, list_cases, load_image
from partialseg.inference.postprocessing import body_mask, keep_largest_component
from partialseg.inference.predictor import Predictor, preprocess_image

__all__ = [
    "Case",
    "Predictor",
    "body_mask",
    "keep_largest_component",
    "list_cases",
    "load_image",
    "preprocess_image",
]
