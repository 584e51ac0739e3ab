"""Input checks and target alignment of :class:`PartialLabelLoss`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from partialseg.losses._targets import resize_nearest

if TYPE_CHECKING:
    from partialseg.labels import LabelRegistry


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):
        # Devices without autocast support have nothing to switch off.
        return contextlib.nullcontext()


def check_non_negative(**options: float | Sequence[float]) -> None:
    for name, value in options.items():
        values = value if isinstance(value, Sequence) else [value]
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"{name} must be finite non-negative numbers, got {value!r}")


def check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim < 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be tensors of shape (B, C, *spatial), got {shape}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")


def check_registry(
    registry: LabelRegistry | None, dataset_names: Sequence[str] | None, logits: torch.Tensor
) -> None:
    if registry is None or dataset_names is None:
        raise ValueError(
            "integer label maps of shape (B, *spatial) need registry= and dataset_names= "
            "to be encoded; pass binary maps of shape (B, C, *spatial) otherwise"
        )
    if registry.num_classes != logits.shape[1]:
        raise ValueError(
            f"the registry has {registry.num_classes} classes but the logits have "
            f"{logits.shape[1]} channels"
        )
    if isinstance(dataset_names, str) or len(dataset_names) != logits.shape[0]:
        raise ValueError(
            f"dataset_names must list one dataset per sample ({logits.shape[0]}), "
            f"got {dataset_names!r}"
        )


def align_target_levels(
    targets: torch.Tensor | Sequence[torch.Tensor], logits_levels: list[torch.Tensor]
) -> list[torch.Tensor]:
    if isinstance(targets, torch.Tensor):
        check_target_shape(targets, logits_levels[0], level=0)
        return [targets] * len(logits_levels)
    targets = list(targets)
    if len(targets) != len(logits_levels):
        raise ValueError(
            f"got {len(logits_levels)} logits levels but {len(targets)} target levels; "
            "pass one targets tensor per level or a single full-resolution tensor"
        )
    for level, (level_targets, level_logits) in enumerate(zip(targets, logits_levels, strict=True)):
        check_target_shape(level_targets, level_logits, level=level)
    return targets


def check_target_shape(targets: torch.Tensor, logits: torch.Tensor, *, level: int) -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be tensors, got {type(targets).__name__} at level {level}")
    binary = targets.shape == logits.shape
    label_map = targets.shape == (logits.shape[0], *logits.shape[2:])
    if not (binary or label_map):
        raise ValueError(
            f"targets at level {level} have shape {tuple(targets.shape)}, but logits of "
            f"shape {tuple(logits.shape)} need binary maps of the same shape or label "
            f"maps of shape {(logits.shape[0], *logits.shape[2:])}"
        )


def resize_to_level(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Resize full-resolution targets to a lower level's spatial shape."""
    spatial = tuple(logits.shape[2:])
    if tuple(targets.shape[-len(spatial) :]) == spatial:
        return targets
    return resize_nearest(targets, spatial)
