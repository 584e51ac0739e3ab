"""Losses for training on partially labeled datasets."""

from partialseg.losses.partial_label import PartialLabelLoss, deep_supervision_weights

__all__ = ["PartialLabelLoss", "deep_supervision_weights"]
