"""The training loop, fine-tuning, checkpoints and distributed training."""

from partialseg.training.checkpoint import Checkpoint, latest_checkpoint, read_checkpoint
from partialseg.training.config import FineTuneConfig, TrainingConfig
from partialseg.training.data import build_registry
from partialseg.training.distributed import DistributedContext, init_distributed
from partialseg.training.finetune import FineTuner
from partialseg.training.targets import NaiveMergeTargets, PartialTargets
from partialseg.training.trainer import Callback, Trainer

__all__ = [
    "Callback",
    "Checkpoint",
    "DistributedContext",
    "FineTuneConfig",
    "FineTuner",
    "NaiveMergeTargets",
    "PartialTargets",
    "Trainer",
    "TrainingConfig",
    "build_registry",
    "init_distributed",
    "latest_checkpoint",
    "read_checkpoint",
]
