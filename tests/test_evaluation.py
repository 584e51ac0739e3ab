"""Scoring predicted mask folders against reference label maps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from partialseg.cli import main
from partialseg.data.io import write_image
from partialseg.evaluation import evaluate_folder, read_reference_labels


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    reference = np.zeros((2, 4, 4), dtype=np.uint8)
    reference[0, :2, :2] = 1  # liver: 4 voxels
    reference[1, :, :] = 2  # spleen: 16 voxels
    references = tmp_path / "references"
    write_image(_image(reference), references / "case1.nii.gz")

    liver = np.zeros_like(reference)
    liver[0, :2, :] = 1  # 8 voxels, 4 of them correct: Dice 2*4/(8+4)
    spleen = (reference == 2).astype(np.uint8)
    kidney = np.zeros_like(reference)
    predictions = tmp_path / "predictions" / "case1"
    write_image(_image(liver), predictions / "A__liver.nii.gz")
    write_image(_image(spleen), predictions / "B__spleen.nii.gz")
    write_image(_image(kidney), predictions / "B__kidney.nii.gz")
    index = {"A__liver": "A/liver", "B__spleen": "B/spleen", "B__kidney": "B/kidney"}
    (predictions / "classes.json").write_text(json.dumps(index))

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"background": 0, "liver": 1, "spleen": 2, "kidney": 3}))
    return tmp_path / "predictions", references, labels


def test_evaluate_folder_dice_values(folders: tuple[Path, Path, Path]) -> None:
    summary = evaluate_folder(*folders)
    assert summary["per_class"]["A/liver"] == pytest.approx(2 * 4 / 12)
    assert summary["per_class"]["B/spleen"] == pytest.approx(1.0)
    assert math.isnan(summary["per_class"]["B/kidney"])
    assert summary["per_dataset"]["A"] == pytest.approx(2 / 3)
    assert summary["per_dataset"]["B"] == pytest.approx(1.0)
    assert summary["overall"]["mean_over_classes"] == pytest.approx((2 / 3 + 1) / 2)
    assert summary["per_case"]["case1"]["B/kidney"] is None


def test_evaluate_folder_skips_classes_not_annotated(folders: tuple[Path, Path, Path]) -> None:
    predictions, references, labels = folders
    (references / "case1.json").write_text(json.dumps({"annotated": ["spleen"]}))
    summary = evaluate_folder(predictions, references, labels)
    assert list(summary["per_class"]) == ["B/spleen"]


def test_evaluate_folder_missing_reference(folders: tuple[Path, Path, Path]) -> None:
    predictions, references, labels = folders
    (references / "case1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="case1"):
        evaluate_folder(predictions, references, labels)


def test_evaluate_folder_no_matching_class(folders: tuple[Path, Path, Path]) -> None:
    predictions, references, _ = folders
    with pytest.raises(ValueError, match="matches a reference class"):
        evaluate_folder(predictions, references, {"heart": [7]})


def test_evaluate_folder_mismatched_grid(folders: tuple[Path, Path, Path]) -> None:
    predictions, references, labels = folders
    shifted = sitk.ReadImage(str(predictions / "case1" / "A__liver.nii.gz"))
    shifted.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(predictions / "case1" / "A__liver.nii.gz"))
    with pytest.raises(ValueError, match="origin"):
        evaluate_folder(predictions, references, labels)


def test_read_reference_labels_from_dataset_json(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "liver": [1, 2], "tumor": 2}}))
    assert read_reference_labels(path) == {"liver": [1, 2], "tumor": [2]}


def test_read_reference_labels_rejects_non_integer(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"liver": "one"}))
    with pytest.raises(ValueError, match="liver"):
        read_reference_labels(path)


def test_cli_evaluate_prints_table(
    folders: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predictions, references, labels = folders
    output = tmp_path / "summary.json"
    status = main(
        [
            "evaluate",
            "--predictions",
            str(predictions),
            "--references",
            str(references),
            "--labels",
            str(labels),
            "-o",
            str(output),
        ]
    )
    assert status == 0
    assert "| B/spleen | 1.000 |" in capsys.readouterr().out
    assert json.loads(output.read_text())["per_class"]["B/spleen"] == 1.0
