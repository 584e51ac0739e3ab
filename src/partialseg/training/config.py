"""Configurations of a training run and of a fine-tuning run."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

# Fields that may differ between a run and its resumption: they change where and
# how fast the run goes, or (epochs) how long it lasts, but not what it computes
# in the epochs already done.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "output_dir", "device", "num_workers", "progress", "mixed_precision"}
)


@dataclasses.dataclass
class TrainingConfig:
    """Everything that defines a training run; saved as ``training_config.json``.

    Spatial tuples are in array order (z, y, x). Under ``torchrun`` every process
    runs ``iterations_per_epoch`` steps on its own ``batch_size`` patches, so the
    global batch is ``batch_size`` times the number of processes.

    Attributes:
        datasets: Dataset folders in nnU-Net raw layout.
        output_dir: Folder for the model, checkpoints and logs.
        spacing: Target spacing in mm; None takes the median spacing of all cases.
        patch_size: Patch size in voxels.
        epochs: Number of epochs.
        iterations_per_epoch: Optimizer steps per epoch.
        batch_size: Patches per step and process.
        seed: Seed of sampling, crops, augmentation and weight initialisation.
        learning_rate: Initial SGD learning rate, decayed as
            ``lr * (1 - epoch / epochs) ** 0.9``.
        momentum: Nesterov momentum.
        weight_decay: SGD weight decay.
        grad_clip: Maximum gradient norm.
        alpha: Exponent of the dataset-balanced sampling, each case drawn with
            probability proportional to n_d ** -alpha.
        foreground_fraction: Fraction of patches centred on a labelled voxel.
        architecture: Registered model name.
        model_args: Extra keyword arguments of the model (``features_per_stage``, ...).
        label_mode: ``"partial"`` counts only the classes each dataset annotates
            (MultiTalent); ``"naive"`` merges classes by name and treats every
            unannotated class as background, the baseline MultiTalent improves on.
        augment: Apply :class:`~partialseg.data.augmentation.Augmentation`.
        device: Torch device, ``"auto"`` picks CUDA when available. Under
            ``torchrun`` a CUDA device is replaced by the process's local GPU.
        mixed_precision: Autocast on CUDA (bf16 where supported, else fp16 with a
            gradient scaler); ignored on CPU.
        num_workers: DataLoader worker processes.
        progress: Show progress bars (on the first process only).

    Example:
        >>> config = TrainingConfig(datasets=["Dataset001_Liver"], output_dir="run", epochs=5)
        >>> config.to_dict()["epochs"], config.patch_size
        (5, (48, 64, 64))
    """

    datasets: list[str]
    output_dir: str
    spacing: tuple[float, float, float] | None = None
    patch_size: tuple[int, int, int] = (48, 64, 64)
    epochs: int = 10
    iterations_per_epoch: int = 50
    batch_size: int = 2
    seed: int = 0
    learning_rate: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    alpha: float = 0.5
    foreground_fraction: float = 1 / 3
    architecture: str = "plain_unet"
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    label_mode: Literal["partial", "naive"] = "partial"
    augment: bool = True
    device: str = "auto"
    mixed_precision: bool = True
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        _check_common(self)
        if self.label_mode not in ("partial", "naive"):
            raise ValueError(f"label_mode must be 'partial' or 'naive', got {self.label_mode!r}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers, got {self.patch_size}")
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)
            if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
                raise ValueError(
                    f"spacing must be three positive numbers in mm (z, y, x), got {self.spacing}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return _to_json_dict(self)


@dataclasses.dataclass
class FineTuneConfig:
    """Everything that defines a fine-tuning run; saved as ``training_config.json``.

    The defaults are the MultiTalent fine-tuning recipe (Ulrich et al., MICCAI
    2023). First ``head_epochs`` epochs train only the heads with AdamW (amsgrad)
    at a learning rate rising linearly to ``head_lr``. Then ``warmup_epochs``
    epochs train the whole network with SGD (Nesterov) at a learning rate rising
    linearly to ``learning_rate``, and ``epochs`` epochs of poly decay follow.
    The run lasts ``head_epochs + warmup_epochs + epochs`` epochs. Spacing, patch
    size and CT normalisation are those of the pretrained model.

    Attributes:
        pretrained: Model folder written by ``save_pretrained`` or a Hugging Face
            Hub repo id.
        datasets: Dataset folders of the new task, in nnU-Net raw layout.
        output_dir: Folder for the model, checkpoints and logs.
        head_epochs: Epochs of the heads-only phase.
        warmup_epochs: Epochs of the whole-network linear warm-up.
        epochs: Epochs of the poly decay after the warm-up.
        head_lr: Peak learning rate of the heads-only phase.
        learning_rate: Peak learning rate of the warm-up and start of the poly decay.
        iterations_per_epoch: Optimizer steps per epoch.
        batch_size: Patches per step and process.
        seed: Seed of sampling, crops, augmentation and new head initialisation.
        momentum: Nesterov momentum of SGD.
        weight_decay: Weight decay of AdamW and SGD.
        grad_clip: Maximum gradient norm.
        alpha: Exponent of the dataset-balanced sampling.
        foreground_fraction: Fraction of patches centred on a labelled voxel.
        augment: Apply :class:`~partialseg.data.augmentation.Augmentation`.
        device: Torch device, ``"auto"`` picks CUDA when available.
        mixed_precision: Autocast on CUDA; ignored on CPU.
        num_workers: DataLoader worker processes.
        progress: Show progress bars (on the first process only).

    Example:
        >>> config = FineTuneConfig(pretrained="run/model", datasets=["Dataset050_Kidney"],
        ...                         output_dir="tuned")
        >>> config.head_epochs, config.warmup_epochs, config.epochs, config.total_epochs
        (10, 50, 1000, 1060)
    """

    pretrained: str
    datasets: list[str]
    output_dir: str
    head_epochs: int = 10
    warmup_epochs: int = 50
    epochs: int = 1000
    head_lr: float = 5e-4
    learning_rate: float = 1e-2
    iterations_per_epoch: int = 250
    batch_size: int = 2
    seed: int = 0
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    alpha: float = 0.5
    foreground_fraction: float = 1 / 3
    augment: bool = True
    device: str = "auto"
    mixed_precision: bool = True
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        _check_common(self)
        if not str(self.pretrained):
            raise ValueError("pretrained must name a model folder or Hub repo id, got ''")
        self.pretrained = str(self.pretrained)
        for name in ("head_epochs", "warmup_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not self.head_lr > 0:
            raise ValueError(f"head_lr must be positive, got {self.head_lr!r}")

    @property
    def total_epochs(self) -> int:
        """Number of epochs of all three phases."""
        return self.head_epochs + self.warmup_epochs + self.epochs

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return _to_json_dict(self)


def config_differences(
    saved: dict[str, Any], current: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Return the fields whose saved and current values differ, as ``(saved, current)``.

    Args:
        saved: ``to_dict()`` of the configuration a checkpoint was written with.
        current: ``to_dict()`` of the configuration of the resuming run.

    Returns:
        Field name to the pair of values, for every field present in either dict.

    Example:
        >>> config_differences({"epochs": 2, "seed": 0}, {"epochs": 4, "seed": 0})
        {'epochs': (2, 4)}
    """
    names = sorted(set(saved) | set(current))
    return {
        name: (saved.get(name), current.get(name))
        for name in names
        if saved.get(name) != current.get(name)
    }


def check_resumable(
    saved_type: str,
    saved_config: dict[str, Any],
    config: TrainingConfig | FineTuneConfig,
    *,
    source: object,
) -> None:
    """Check that a run may resume from a checkpoint written with another configuration.

    Args:
        saved_type: Class name of the checkpoint's configuration.
        saved_config: ``to_dict()`` of the checkpoint's configuration.
        config: The configuration of the resuming run.
        source: The run's output folder, for messages.

    Raises:
        ValueError: If the configuration types differ, or fields outside
            :data:`RESUMABLE_CHANGES` have other values.

    Example:
        >>> config = TrainingConfig(datasets=["D1"], output_dir="run", epochs=20)
        >>> saved = TrainingConfig(datasets=["D1"], output_dir="run").to_dict()
        >>> check_resumable("TrainingConfig", saved, config, source="run")
        >>> check_resumable("TrainingConfig", saved | {"seed": 3}, config, source="run")
        Traceback (most recent call last):
        ...
        ValueError: cannot resume run: the configuration differs ... in seed: saved 3, given 0. ...
    """
    if saved_type != type(config).__name__:
        raise ValueError(
            f"the checkpoint in {source} belongs to a {saved_type} run, not a "
            f"{type(config).__name__} run; resume it with the command that started it"
        )
    differences = config_differences(saved_config, config.to_dict())
    blocking = {
        k: v
        for k, v in differences.items()
        if k not in RESUMABLE_CHANGES and not (k in _PATH_FIELDS and _same_paths(*v))
    }
    if blocking:
        listed = "; ".join(f"{k}: saved {v[0]!r}, given {v[1]!r}" for k, v in blocking.items())
        raise ValueError(
            f"cannot resume {source}: the configuration differs from the checkpoint's in "
            f"{listed}. Resume with the original settings (only {sorted(RESUMABLE_CHANGES)} "
            "may change), or start a new run in another folder"
        )
    if "epochs" in differences:
        saved, current = differences["epochs"]
        logger.info(
            "epochs changed from %s to %s; the learning-rate decay follows the new length",
            saved,
            current,
        )


_PATH_FIELDS = frozenset({"datasets", "pretrained"})
"""Configuration fields holding paths, equal on resume when they name the same folders."""


def _same_paths(saved: Any, current: Any) -> bool:
    """Return whether two path fields name the same files, relative paths taken from the cwd."""
    if isinstance(saved, str) and isinstance(current, str):
        saved, current = [saved], [current]
    if not (isinstance(saved, list) and isinstance(current, list)) or len(saved) != len(current):
        return False
    return all(
        isinstance(a, str) and isinstance(b, str) and Path(a).resolve() == Path(b).resolve()
        for a, b in zip(saved, current, strict=True)
    )


def _check_common(config: TrainingConfig | FineTuneConfig) -> None:
    if isinstance(config.datasets, str) or not config.datasets:
        raise ValueError(f"datasets must list at least one dataset folder, got {config.datasets!r}")
    config.datasets = [str(path) for path in config.datasets]
    config.output_dir = str(config.output_dir)
    for name in ("epochs", "iterations_per_epoch", "batch_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be at least 1, got {value!r}")
    if not config.learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {config.learning_rate!r}")
    if not config.grad_clip > 0:
        raise ValueError(f"grad_clip must be positive, got {config.grad_clip!r}")
    if not 0.0 <= config.foreground_fraction <= 1.0:
        raise ValueError(
            f"foreground_fraction must lie in [0, 1], got {config.foreground_fraction!r}"
        )
    if config.num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {config.num_workers!r}")


def _to_json_dict(config: TrainingConfig | FineTuneConfig) -> dict[str, Any]:
    """Return ``asdict`` as read back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
