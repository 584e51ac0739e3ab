"""Learning-rate schedules and optimizers for training and fine-tuning."""

from partialseg.schedules.optimizers import (
    FineTuningOptimizers,
    build_finetuning_optimizers,
    head_parameters,
)
from partialseg.schedules.warmup import WarmupSchedule, poly_lr

__all__ = [
    "FineTuningOptimizers",
    "WarmupSchedule",
    "build_finetuning_optimizers",
    "head_parameters",
    "poly_lr",
]
