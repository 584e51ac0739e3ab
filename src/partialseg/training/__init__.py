"""The training loop and its configuration."""

from partialseg.training.config import TrainingConfig
from partialseg.training.targets import NaiveMergeTargets, PartialTargets
from partialseg.training.trainer import Trainer, build_registry, poly_lr

__all__ = [
    "NaiveMergeTargets",
    "PartialTargets",
    "Trainer",
    "TrainingConfig",
    "build_registry",
    "poly_lr",
]
