"""Training protocols, folds and the MultiTalent evaluation averages on hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from benchmarks.multitalent13 import protocols
from benchmarks.multitalent13.collection import load_collection
from benchmarks.multitalent13.convert_downloads import convert_dataset, find_cases
from benchmarks.multitalent13.protocols import (
    build_configs,
    collection_organ_of,
    format_table,
    mean_per_class,
    prepare_fold,
    published_options,
    split_cases,
    summarize,
    write_organ_views,
)

from partialseg.data.nnunet import read_raw_dataset
from partialseg.training import NaiveMergeTargets, build_registry

from .volumes import write_pair, write_volume

COLLECTION = load_collection()

SCORES = {
    "per_dataset": {"A/liver": 0.95, "A/tumor": 0.5, "B/spleen": 0.7, "B/cyst": math.nan},
    "multitalent": {"A/liver": 0.96, "A/tumor": 0.6, "B/spleen": 0.8, "B/cyst": 0.4},
}


def test_summary_difficult_classes_from_baseline():
    summary = summarize(SCORES, lesion_classes=["A/tumor", "B/cyst"])
    assert summary["difficult_classes"] == ["A/tumor", "B/spleen"]
    assert summary["lesion_classes"] == ["A/tumor", "B/cyst"]


def test_summary_means():
    result = summarize(SCORES, lesion_classes=["A/tumor", "B/cyst"])["protocols"]
    multitalent, baseline = result["multitalent"], result["per_dataset"]
    assert multitalent["mean_over_classes"] == pytest.approx((0.96 + 0.6 + 0.8 + 0.4) / 4)
    assert multitalent["mean_over_datasets"] == pytest.approx((0.78 + 0.6) / 2)
    assert multitalent["mean_difficult"] == pytest.approx(0.7)
    assert multitalent["mean_lesion"] == pytest.approx(0.5)
    assert baseline["mean_over_classes"] == pytest.approx((0.95 + 0.5 + 0.7) / 3)
    assert baseline["mean_lesion"] == pytest.approx(0.5)


def test_summary_rejects_missing_baseline():
    with pytest.raises(ValueError, match="baseline 'per_dataset'"):
        summarize({"multitalent": SCORES["multitalent"]})


def test_table_marks_and_missing_values():
    summary = summarize(SCORES, lesion_classes=["A/tumor"])
    table = format_table(SCORES, summary, labels={"multitalent": "MT"})
    assert table.splitlines()[0] == "| class | per_dataset | MT |"
    assert "| A/tumor * (L) | 50.0 | 60.0 |" in table
    assert "| B/cyst | n/a | 40.0 |" in table
    assert "| **difficult classes (2)** | 60.0 | 70.0 |" in table


def test_mean_per_class_skips_missing():
    means = mean_per_class({"c1": {"A/x": 0.2, "A/y": None}, "c2": {"A/x": 0.4, "A/y": None}})
    assert means["A/x"] == pytest.approx(0.3)
    assert math.isnan(means["A/y"])


def test_split_cases_disjoint_and_complete():
    cases = [f"case_{i:03d}" for i in range(23)]
    folds = split_cases(cases, folds=5, seed=1)
    assert sorted(c for fold in folds for c in fold) == cases
    assert [len(fold) for fold in folds] == [5, 5, 5, 4, 4]
    assert split_cases(cases, folds=5, seed=1) == folds


def test_published_options():
    assert published_options("multitalent")["epochs"] == 2000
    assert published_options("per_dataset")["epochs"] == 1000
    assert published_options("naive_merge")["patch_size"] == (96, 192, 192)


@pytest.fixture
def converted(tmp_path):
    """Three converted datasets with four cases each: liver, BTCV and spleen."""
    sources = {
        "Task003_Liver": ("Task03_Liver", [1, 2]),
        "Task009_Spleen": ("Task09_Spleen", [1]),
    }
    for dataset_id, (folder, values) in sources.items():
        root = tmp_path / "downloads" / folder
        for index in range(4):
            name = f"{folder.lower()}_{index}.nii.gz"
            write_pair(root / "imagesTr" / name, root / "labelsTr" / name, values, seed=index)
        spec = COLLECTION.get(dataset_id)
        convert_dataset(spec, find_cases(spec, root), tmp_path / "collection", progress=False)
    btcv = tmp_path / "downloads" / "Abdomen" / "RawData" / "Training"
    for case in ("0001", "0002", "0003", "0004"):
        write_pair(
            btcv / "img" / f"img{case}.nii.gz", btcv / "label" / f"label{case}.nii.gz", [1, 6]
        )
    spec = COLLECTION.get("Task017_AbdominalOrganSegmentation")
    convert_dataset(
        spec, find_cases(spec, btcv.parents[1]), tmp_path / "collection", progress=False
    )
    return tmp_path / "collection"


def test_prepare_fold_splits_every_dataset(converted, tmp_path):
    fold_dir = prepare_fold(converted, tmp_path / "runs", fold=1, folds=4)

    for dataset in ("Task003_Liver", "Task009_Spleen", "Task017_AbdominalOrganSegmentation"):
        train = sorted(p.name for p in (fold_dir / "train" / dataset / "labelsTr").iterdir())
        test = sorted(p.name for p in (fold_dir / "test" / dataset / "references").iterdir())
        assert len(train) == 3
        assert len(test) == 1
        assert not set(train) & set(test)
        metadata = json.loads((fold_dir / "train" / dataset / "dataset.json").read_text())
        assert metadata["numTraining"] == 3


def test_naive_views_merge_by_structure(converted, tmp_path):
    fold_dir = prepare_fold(converted, tmp_path / "runs", fold=0, folds=4)
    views = sorted(p for p in (fold_dir / "train_naive").iterdir())
    registry = build_registry([read_raw_dataset(p) for p in views])

    merged = NaiveMergeTargets(registry).class_names
    assert merged[:4] == [
        "merged/liver",
        "merged/liver_tumor",
        "merged/spleen",
        "merged/kidney_right",
    ]
    # 2 liver classes + 1 spleen + 13 BTCV organs, of which liver and spleen are shared.
    assert len(merged) == 14
    liver = json.loads((views[0] / "dataset.json").read_text())["labels"]
    assert liver == {"background": 0, "liver": [1, 2], "liver_tumor": 2}


def test_organ_views_reject_clashing_names(converted, tmp_path):
    with pytest.raises(ValueError, match="same structure 'organ'"):
        write_organ_views([converted / "Task003_Liver"], tmp_path / "views", lambda d, c: "organ")


def test_build_configs_per_protocol(converted, tmp_path):
    folders = sorted(p for p in converted.iterdir() if p.is_dir())
    per_dataset = build_configs("per_dataset", folders, tmp_path / "models", epochs=3)
    assert sorted(per_dataset) == [p.name for p in folders]
    assert per_dataset["Task003_Liver"].datasets == [str(converted / "Task003_Liver")]
    assert per_dataset["Task003_Liver"].epochs == 3

    (multitalent,) = build_configs("multitalent", folders, tmp_path / "models").values()
    assert multitalent.label_mode == "partial"
    assert len(multitalent.datasets) == 3
    (naive,) = build_configs("naive_merge", folders, tmp_path / "models").values()
    assert naive.label_mode == "naive"


def test_build_configs_rejects_unknown_protocol(tmp_path):
    with pytest.raises(ValueError, match="protocol must be one of"):
        build_configs("universal", [tmp_path], tmp_path)


def test_collection_organ_of_falls_back_to_class_name():
    organ_of = collection_organ_of(COLLECTION)
    assert organ_of("Task055_SegTHOR", "55_trachea") == "trachea"
    assert organ_of("Task051_StructSeg2019_Task3_Thoracic_OAR", "51_bronchies") == "trachea"
    assert organ_of("DatasetX", "Brainstem") == "Brainstem"


def write_blob_case(image_path, label_path, values, seed):
    """Write a 12 x 20 x 20 CT with one bright block per label value."""
    rng = np.random.default_rng(seed)
    image = rng.normal(-100, 20, (12, 20, 20)).astype(np.int16)
    label = np.zeros((12, 20, 20), np.uint8)
    for index, value in enumerate(values):
        label[2 + index * 4 : 6 + index * 4, 5:12, 5:12] = value
        image[label == value] += 300 + 100 * index
    write_volume(image_path, image)
    write_volume(label_path, label)


def test_command_line_end_to_end(tmp_path, capsys):
    for dataset_id, folder, values in (
        ("Task003_Liver", "Task03_Liver", [1, 2]),
        ("Task009_Spleen", "Task09_Spleen", [1]),
    ):
        root = tmp_path / "downloads" / folder
        for index in range(5):
            name = f"{folder.lower()}_{index}.nii.gz"
            write_blob_case(root / "imagesTr" / name, root / "labelsTr" / name, values, index)
        spec = COLLECTION.get(dataset_id)
        convert_dataset(spec, find_cases(spec, root), tmp_path / "collection", progress=False)
    assert (
        protocols.main(["prepare", str(tmp_path / "collection"), "-o", str(tmp_path / "runs")]) == 0
    )
    fold = tmp_path / "runs" / "fold_0"
    small = [
        "--epochs",
        "1",
        "--iterations",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--spacing",
        "2.5",
        "1.6",
        "1.6",
        "--patch-size",
        "8",
        "8",
        "8",
        "--features",
        "2",
        "4",
    ]

    for protocol in ("multitalent", "per_dataset", "naive_merge"):
        assert protocols.main(["train", str(fold), "--protocol", protocol, *small]) == 0
        assert (
            protocols.main(["evaluate", str(fold), "--protocol", protocol, "--device", "cpu"]) == 0
        )
        assert (fold / "scores" / f"{protocol}.json").is_file()
    capsys.readouterr()
    assert protocols.main(["report", str(fold)]) == 0

    table = capsys.readouterr().out
    assert "| class | multitalent | per_dataset | naive_merge |" in table
    assert "| Task003_Liver/03_cancer" in table
    assert "| Task009_Spleen/09_spleen" in table
    assert "**mean over datasets**" in table
