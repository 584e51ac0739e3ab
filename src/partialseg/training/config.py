"""Configuration of a training run."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal


@dataclasses.dataclass
class TrainingConfig:
    """Everything that defines a training run; saved as ``training_config.json``.

    Spatial tuples are in array order (z, y, x).

    Attributes:
        datasets: Dataset folders in nnU-Net raw layout.
        output_dir: Folder for the model, checkpoints and logs.
        spacing: Target spacing in mm; None takes the median spacing of all cases.
        patch_size: Patch size in voxels.
        epochs: Number of epochs.
        iterations_per_epoch: Optimizer steps per epoch.
        batch_size: Patches per step.
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
        device: Torch device, ``"auto"`` picks CUDA when available.
        mixed_precision: Autocast on CUDA (bf16 where supported); ignored on CPU.
        num_workers: DataLoader worker processes.
        progress: Show progress bars.
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
        if not self.datasets:
            raise ValueError("datasets must name at least one dataset folder, got none")
        if self.label_mode not in ("partial", "naive"):
            raise ValueError(f"label_mode must be 'partial' or 'naive', got {self.label_mode!r}")
        for name in ("epochs", "iterations_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers, got {self.patch_size}")
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)
