"""Segmentation networks with one sigmoid output channel per class, and their registry."""

from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.heads import ClassHeads, ClassHeadsView
from partialseg.nn.registry import create_model, list_models, register_model
from partialseg.nn.unet import PlainUNet, Topology, plan_topology

__all__ = [
    "ClassHeads",
    "ClassHeadsView",
    "PlainUNet",
    "SegmentationNetwork",
    "Topology",
    "create_model",
    "list_models",
    "plan_topology",
    "register_model",
]
