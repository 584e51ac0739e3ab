"""Whole-volume prediction: sliding window, streaming stitching, post-processing, writers."""

from partialseg.inference.inputs import Case, list_cases, load_image
from partialseg.inference.postprocessing import (
    POSTPROCESSING_STEPS,
    body_mask,
    keep_largest_component,
)
from partialseg.inference.predictor import Predictor, preprocess_image
from partialseg.inference.writers import (
    FORMATS,
    OVERLAP_POLICIES,
    build_label_map,
    predict_to_folder,
    safe_file_names,
    write_prediction,
)

__all__ = [
    "FORMATS",
    "OVERLAP_POLICIES",
    "POSTPROCESSING_STEPS",
    "Case",
    "Predictor",
    "body_mask",
    "build_label_map",
    "keep_largest_component",
    "list_cases",
    "load_image",
    "predict_to_folder",
    "preprocess_image",
    "safe_file_names",
    "write_prediction",
]
