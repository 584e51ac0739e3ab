"""Segmentation networks with one sigmoid output channel per class, and their registry."""

from partialseg.nn import adapters
from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.heads import ClassHeads, ClassHeadsView
from partialseg.nn.registry import create_model, list_models, register_model
from partialseg.nn.resenc_unet import ResEncUNet
from partialseg.nn.topology import Topology, plan_topology
from partialseg.nn.unet import PlainUNet

__all__ = [
    "ClassHeads",
    "ClassHeadsView",
    "PlainUNet",
    "ResEncUNet",
    "SegmentationNetwork",
    "Topology",
    "adapters",
    "create_model",
    "list_models",
    "plan_topology",
    "register_model",
]
