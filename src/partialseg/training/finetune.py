"""Fine-tuning a pretrained network on new datasets with the MultiTalent warm-up recipe."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from partialseg.data.nnunet import Case
from partialseg.hub import from_pretrained
from partialseg.nn.base import SegmentationNetwork
from partialseg.schedules import WarmupSchedule, build_finetuning_optimizers
from partialseg.training.config import FineTuneConfig
from partialseg.training.data import load_normalized_cases
from partialseg.training.targets import PartialTargets
from partialseg.training.trainer import Callback, Trainer

logger = logging.getLogger(__name__)


class FineTuner(Trainer):
    """Fine-tunes a pretrained network on the datasets of a new task.

    The network is loaded with ``from_pretrained(config.pretrained,
    classes=registry)``, where the registry contains the classes of the new
    datasets: every backbone tensor is loaded, a class whose full name
    (``"<dataset>/<class>"``) is in the pretrained model keeps its head, and the
    other classes get new heads. The cases are resampled to the pretrained
    model's spacing and normalised with its CT statistics, and patches have its
    patch size. Nothing is recomputed from the new data.

    Training follows :class:`~partialseg.schedules.WarmupSchedule` (Ulrich et al.,
    MICCAI 2023, after Kumar et al., ICLR 2022): first only the heads train with
    AdamW (amsgrad) while the backbone is frozen, then the whole network with SGD
    (Nesterov), first with a linear warm-up and then with poly decay. Everything
    else (checkpoints, resume, ``torchrun``) works as in :class:`Trainer`.

    Args:
        config: The fine-tuning configuration.
        callbacks: Hooks called after each step and epoch.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from partialseg.data.synthetic import make_synthetic_collection
        >>> from partialseg.training import Trainer, TrainingConfig
        >>> root = Path(tempfile.mkdtemp())
        >>> s1, s2, s3 = make_synthetic_collection(root / "data", cases_per_dataset=(1, 1, 1))
        >>> tiny = {"iterations_per_epoch": 1, "device": "cpu", "progress": False}
        >>> _ = Trainer(TrainingConfig(
        ...     datasets=[str(s1), str(s2)], output_dir=str(root / "pretrained"), epochs=1,
        ...     patch_size=(16, 32, 32), model_args={"features_per_stage": [4, 8]}, **tiny)).fit()
        >>> config = FineTuneConfig(
        ...     pretrained=str(root / "pretrained" / "model"), datasets=[str(s2), str(s3)],
        ...     output_dir=str(root / "tuned"), head_epochs=1, warmup_epochs=1, epochs=1, **tiny)
        >>> tuner = FineTuner(config)
        >>> network = tuner.fit()
        >>> [record["phase"] for record in tuner.history]
        ['heads', 'warmup', 'poly']
    """

    config: FineTuneConfig

    def __init__(self, config: FineTuneConfig, *, callbacks: list[Callback] | None = None) -> None:
        if not isinstance(config, FineTuneConfig):
            raise TypeError(
                f"FineTuner needs a FineTuneConfig, got {type(config).__name__}; use Trainer "
                "to train from scratch"
            )
        super().__init__(config, callbacks=callbacks)

    def _prepare_network_and_cases(self, cases: list[Case]) -> SegmentationNetwork:
        config = self.config
        network = from_pretrained(config.pretrained, classes=self.registry)
        network.train()
        if network.preprocessing is None:
            raise ValueError(
                f"the pretrained model {config.pretrained!r} has no preprocessing (spacing, "
                "patch size, CT statistics) in its config.json, so the new data cannot be "
                "prepared like its training data; set network.preprocessing and save it again"
            )
        self.preprocessing = dataclasses.replace(network.preprocessing)
        logger.info(
            "fine-tuning %s at spacing %s mm, patch size %s",
            config.pretrained,
            self.preprocessing.spacing,
            self.preprocessing.patch_size,
        )
        self.cases = load_normalized_cases(
            cases, self.preprocessing, self.registry, seed=config.seed, progress=self._progress
        )
        self.targets = PartialTargets(self.registry)
        network.label_registry = self.registry
        network.preprocessing = self.preprocessing
        return network

    def _build_optimization(self) -> tuple[WarmupSchedule, Any]:
        config = self.config
        schedule = WarmupSchedule(
            head_epochs=config.head_epochs,
            head_lr=config.head_lr,
            warmup_epochs=config.warmup_epochs,
            base_lr=config.learning_rate,
            poly_epochs=config.epochs,
        )
        optimizers = build_finetuning_optimizers(
            self.network, weight_decay=config.weight_decay, momentum=config.momentum
        )
        return schedule, optimizers
