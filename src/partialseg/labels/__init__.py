"""Datasets, their classes and the encoding of label maps into per-class targets."""

from partialseg.labels._dataset import DatasetLabels, suggest_name
from partialseg.labels.readers import read_dataset_json
from partialseg.labels.registry import LabelRegistry

__all__ = ["DatasetLabels", "LabelRegistry", "read_dataset_json", "suggest_name"]
