"""Scoring a folder of predicted per-class masks against reference label maps."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from partialseg.data.io import check_same_grid, image_stem, read_image
from partialseg.metrics import dice_score, summarize_scores

logger = logging.getLogger(__name__)


def read_reference_labels(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Read the class name to label values mapping of reference label maps.

    Accepts a plain ``{"name": value or [values]}`` JSON file or an nnU-Net
    ``dataset.json`` (its ``labels`` entry); ``background`` is skipped.

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: The file is not a mapping of names to integer values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference label file not found: {path}")
    data = json.loads(path.read_text())
    labels = data.get("labels", data) if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        raise ValueError(f"{path} must map class names to label values")
    mapping = {}
    for name, value in labels.items():
        if name == "background":
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) for v in values):
            raise ValueError(f"{path}: label values of {name!r} must be integers, got {value!r}")
        mapping[name] = values
    return mapping


def read_predicted_masks(case_dir: Path) -> dict[str, Path]:
    """Return class name to mask file for one case folder written by ``partialseg predict``.

    The folder's ``classes.json`` maps file name stems to class names; without
    it, ``__`` in a stem stands for the ``/`` of the class name.
    """
    index_file = case_dir / "classes.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        return {name: case_dir / f"{stem}.nii.gz" for stem, name in index.items()}
    return {image_stem(path).replace("__", "/"): path for path in sorted(case_dir.glob("*.nii*"))}


def score_case(
    masks: Mapping[str, Path],
    reference: sitk.Image,
    labels: Mapping[str, list[int]],
    *,
    annotated: set[str] | None = None,
) -> dict[str, float]:
    """Dice of every predicted class whose bare name (after ``/``) has a reference label.

    Args:
        masks: Predicted class name (``"<dataset>/<class>"``) to mask file.
        reference: Reference label map.
        labels: Reference class name to label values.
        annotated: Reference classes contoured in this case; others are skipped
            because an absent contour does not mean an absent organ.

    Returns:
        Predicted class name to Dice (NaN when both masks are empty).
    """
    reference_array = sitk.GetArrayViewFromImage(reference)
    scores = {}
    for name, mask_path in masks.items():
        bare = name.split("/", 1)[-1]
        if bare not in labels or (annotated is not None and bare not in annotated):
            continue
        mask = read_image(mask_path)
        check_same_grid(reference, mask, image_name="reference", label_name=str(mask_path))
        expected = np.isin(reference_array, labels[bare])
        scores[name] = dice_score(sitk.GetArrayViewFromImage(mask), expected)
    return scores


def evaluate_folder(
    predictions: str | os.PathLike[str],
    references: str | os.PathLike[str],
    labels: str | os.PathLike[str] | Mapping[str, list[int]],
) -> dict[str, Any]:
    """Score every case folder of ``predictions`` against ``references/<case>.nii.gz``.

    A reference folder may hold ``<case>.json`` files with an ``"annotated"`` list
    of the classes contoured in that case; other classes are skipped for the case.

    Args:
        predictions: Output folder of ``partialseg predict`` (one folder per case).
        references: Folder of reference label maps named after the cases.
        labels: Reference class name to label values, or a JSON file with them.

    Returns:
        :func:`~partialseg.metrics.summarize_scores` output plus ``"per_case"`` scores.

    Raises:
        FileNotFoundError: A folder or a case's reference label map is missing.
        ValueError: No predicted class matches a reference class.
    """
    predictions, references = Path(predictions), Path(references)
    for folder in (predictions, references):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
    label_map = labels if isinstance(labels, Mapping) else read_reference_labels(labels)
    per_case = {}
    for case_dir in sorted(p for p in predictions.iterdir() if p.is_dir()):
        reference_path = references / f"{case_dir.name}.nii.gz"
        if not reference_path.is_file():
            raise FileNotFoundError(
                f"no reference label map for case {case_dir.name!r}: expected {reference_path}"
            )
        annotated = _annotated_classes(references / f"{case_dir.name}.json")
        masks = read_predicted_masks(case_dir)
        per_case[case_dir.name] = score_case(
            masks, read_image(reference_path), label_map, annotated=annotated
        )
    if not any(per_case.values()):
        raise ValueError(
            f"no predicted class in {predictions} matches a reference class "
            f"{sorted(label_map)}; classes are matched by the name after '/'"
        )
    summary = summarize_scores(per_case)
    summary["per_case"] = {
        case: {name: (None if math.isnan(v) else v) for name, v in scores.items()}
        for case, scores in per_case.items()
    }
    return summary


def _annotated_classes(path: Path) -> set[str] | None:
    if not path.is_file():
        return None
    return set(json.loads(path.read_text()).get("annotated", []))
