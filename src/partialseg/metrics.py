"""Segmentation metrics and the per-class, per-dataset summary MultiTalent reports."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def dice_score(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Return the Dice coefficient of two binary masks.

    Args:
        prediction: Predicted mask (any shape, non-zero is foreground).
        reference: Reference mask of the same shape.

    Returns:
        ``2 |P ∩ R| / (|P| + |R|)``, or NaN when both masks are empty (the class is
        absent and was not predicted, which Dice cannot score).

    Raises:
        ValueError: The shapes differ.

    Example:
        >>> a = np.array([1, 1, 0, 0]); b = np.array([1, 0, 0, 0])
        >>> round(dice_score(a, b), 4)
        0.6667
        >>> dice_score(np.zeros(3), np.zeros(3))
        nan
    """
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction shape {prediction.shape} differs from reference shape {reference.shape}"
        )
    predicted = prediction.astype(bool)
    expected = reference.astype(bool)
    denominator = int(predicted.sum()) + int(expected.sum())
    if denominator == 0:
        return math.nan
    return 2.0 * int(np.logical_and(predicted, expected).sum()) / denominator


def summarize_scores(
    scores: Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """Average Dice per class over cases, then per dataset over its classes.

    Args:
        scores: Case name to a dict from class name (``"<dataset>/<class>"``) to Dice.
            NaN values (nothing to score) are left out of the averages.

    Returns:
        ``{"per_class": {class: mean}, "per_dataset": {dataset: mean of its
        classes}, "overall": {"mean_over_classes": ..., "mean_over_datasets": ...}}``.

    Example:
        >>> summary = summarize_scores({"c1": {"A/liver": 0.9, "B/spleen": 0.7},
        ...                             "c2": {"A/liver": 0.7, "B/spleen": float("nan")}})
        >>> summary["per_class"]
        {'A/liver': 0.8, 'B/spleen': 0.7}
        >>> summary["overall"]["mean_over_classes"]
        0.75
    """
    per_class_values: dict[str, list[float]] = {}
    for case_scores in scores.values():
        for name, value in case_scores.items():
            per_class_values.setdefault(name, [])
            if not math.isnan(value):
                per_class_values[name].append(value)
    per_class = {
        name: (float(np.mean(values)) if values else math.nan)
        for name, values in per_class_values.items()
    }
    per_dataset_values: dict[str, list[float]] = {}
    for name, value in per_class.items():
        dataset = name.split("/", 1)[0] if "/" in name else ""
        if not math.isnan(value):
            per_dataset_values.setdefault(dataset, []).append(value)
    per_dataset = {name: float(np.mean(values)) for name, values in per_dataset_values.items()}
    valid = [v for v in per_class.values() if not math.isnan(v)]
    overall = {
        "mean_over_classes": float(np.mean(valid)) if valid else math.nan,
        "mean_over_datasets": float(np.mean(list(per_dataset.values())))
        if per_dataset
        else math.nan,
    }
    return {"per_class": per_class, "per_dataset": per_dataset, "overall": overall}


def format_table(summary: Mapping[str, Mapping[str, float]]) -> str:
    """Render :func:`summarize_scores` output as a Markdown table.

    Example:
        >>> print(format_table({"per_class": {"A/liver": 0.8}, "per_dataset": {"A": 0.8},
        ...                     "overall": {"mean_over_classes": 0.8}}))
        | class | Dice |
        |---|---|
        | A/liver | 0.800 |
        | **dataset A** | 0.800 |
        | **mean_over_classes** | 0.800 |
    """
    lines = ["| class | Dice |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in summary["per_class"].items()]
    lines += [
        f"| **dataset {name}** | {value:.3f} |" for name, value in summary["per_dataset"].items()
    ]
    lines += [f"| **{name}** | {value:.3f} |" for name, value in summary["overall"].items()]
    return "\n".join(lines)
