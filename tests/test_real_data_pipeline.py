"""Train, predict and evaluate on the real OpenKBP head-and-neck CT with a tiny budget.

This checks the pipeline end to end on real files, not the accuracy: the budget
is a few optimizer steps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from partialseg.cli import main
from partialseg.data.io import check_same_grid

DATASETS = ["DatasetD_OKBPparotid", "DatasetE_OKBPmandible", "DatasetF_OKBPfull"]


@pytest.fixture(scope="module")
def trained_model(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("openkbp") / "run"
    arguments = [
        "train",
        "-o",
        str(output),
        "--spacing",
        "8,12,12",
        "--patch-size",
        "16,32,32",
        "--features",
        "4,8,16",
        "--epochs",
        "1",
        "--iterations",
        "2",
        "--no-progress",
    ]
    for name in DATASETS:
        arguments += ["--dataset", str(data_root / "collection" / name)]
    assert main(arguments) == 0
    return output / "model"


def test_trained_model_has_every_dataset_class(trained_model: Path) -> None:
    config = json.loads((trained_model / "config.json").read_text())
    assert len(config["class_names"]) == 4 + 5 + 7
    assert "DatasetF_OKBPfull/Esophagus" in config["class_names"]
    assert config["preprocessing"]["spacing"] == [8.0, 12.0, 12.0]


def test_predict_and_evaluate_held_out_patient(
    trained_model: Path, data_root: Path, tmp_path: Path
) -> None:
    patient = data_root / "openkbp" / "pt_20"
    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(patient / "ct.nii.gz", images / "pt_20.nii.gz")
    predictions = tmp_path / "predictions"
    assert (
        main(
            [
                "predict",
                "-i",
                str(images),
                "-o",
                str(predictions),
                "-m",
                str(trained_model),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )

    masks = sorted((predictions / "pt_20").glob("*.nii.gz"))
    assert len(masks) == 16
    ct = sitk.ReadImage(str(patient / "ct.nii.gz"))
    for mask_path in masks:
        mask = sitk.ReadImage(str(mask_path))
        check_same_grid(ct, mask, label_name=mask_path.name)
        assert mask.GetPixelID() == sitk.sitkUInt8

    references = tmp_path / "references"
    references.mkdir()
    shutil.copyfile(patient / "oar_labels.nii.gz", references / "pt_20.nii.gz")
    meta = json.loads((patient / "meta.json").read_text())
    (references / "pt_20.json").write_text(json.dumps({"annotated": meta["oars_contoured"]}))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(meta["oar_label_values"]))
    summary_path = tmp_path / "summary.json"
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(predictions),
                "--references",
                str(references),
                "--labels",
                str(labels),
                "-o",
                str(summary_path),
            ]
        )
        == 0
    )
    summary = json.loads(summary_path.read_text())
    # Esophagus was not contoured for pt_20, so it must not be scored.
    assert "DatasetF_OKBPfull/Esophagus" not in summary["per_class"]
    assert "DatasetF_OKBPfull/Larynx" in summary["per_class"]
    assert set(summary["per_dataset"]) == set(DATASETS)
