"""partialseg: one segmentation network for many partially labeled medical image datasets.

The public names are imported lazily on first access, so ``import partialseg``
stays fast and the command line starts without loading every submodule.

Example:
    >>> import partialseg
    >>> registry = partialseg.LabelRegistry()
    >>> registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
    >>> registry.class_names
    ['D01/liver', 'D01/liver_tumor']
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "LabelRegistry": "partialseg.labels",
    "ClassHeads": "partialseg.nn",
    "SegmentationNetwork": "partialseg.nn.base",
    "create_model": "partialseg.nn",
    "list_models": "partialseg.nn",
    "PartialLabelLoss": "partialseg.losses",
    "DatasetBalancedSampler": "partialseg.sampling",
    "WarmupSchedule": "partialseg.schedules",
    "Preprocessing": "partialseg.data.preprocessing",
    "Predictor": "partialseg.inference",
    "Trainer": "partialseg.training",
    "TrainingConfig": "partialseg.training",
    "FineTuner": "partialseg.training",
    "FineTuneConfig": "partialseg.training",
    "from_pretrained": "partialseg.hub",
    "save_pretrained": "partialseg.hub",
    "push_to_hub": "partialseg.hub",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'partialseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
