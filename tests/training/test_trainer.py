"""The training loop on the synthetic collection: outputs, baseline targets, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from partialseg.cli import main
from partialseg.hub import from_pretrained
from partialseg.labels import LabelRegistry
from partialseg.training import NaiveMergeTargets, PartialTargets, Trainer, TrainingConfig


def _config(collection: list[Path], output: Path, **overrides) -> TrainingConfig:
    options = {
        "datasets": [str(folder) for folder in collection],
        "output_dir": str(output),
        "patch_size": (16, 32, 32),
        "epochs": 2,
        "iterations_per_epoch": 3,
        "batch_size": 2,
        "model_args": {"features_per_stage": [4, 8, 16]},
        "progress": False,
    }
    options.update(overrides)
    return TrainingConfig(**options)


def test_fit_writes_loadable_model(synthetic_collection: list[Path], tmp_path: Path) -> None:
    network = Trainer(_config(synthetic_collection, tmp_path / "run")).fit()
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "config.json").is_file()
    assert (model_dir / "model.safetensors").is_file()
    log = json.loads((tmp_path / "run" / "training_log.json").read_text())
    assert [record["epoch"] for record in log["epochs"]] == [1, 2]

    loaded = from_pretrained(model_dir)
    assert loaded.class_names == network.class_names
    assert loaded.preprocessing == network.preprocessing
    assert loaded.label_registry.class_names == network.class_names
    network.eval()
    loaded.eval()
    network.deep_supervision = loaded.deep_supervision = False
    x = torch.randn(1, 1, 16, 32, 32)
    torch.testing.assert_close(network(x), loaded(x))


def test_partial_model_has_one_output_per_dataset_class(
    synthetic_collection: list[Path], tmp_path: Path
) -> None:
    trainer = Trainer(_config(synthetic_collection, tmp_path / "run", epochs=1))
    trainer.setup()
    assert trainer.network.class_names == [
        "DatasetS1_LiverSpleen/liver",
        "DatasetS1_LiverSpleen/liver_tumor",
        "DatasetS1_LiverSpleen/spleen",
        "DatasetS2_SpleenKidney/spleen",
        "DatasetS2_SpleenKidney/kidney_left",
        "DatasetS2_SpleenKidney/kidney_right",
        "DatasetS3_LiverKidney/liver",
        "DatasetS3_LiverKidney/kidney_left",
        "DatasetS3_LiverKidney/kidney_right",
    ]
    assert trainer.preprocessing.spacing == (3.0, 2.5, 2.5)


def test_naive_mode_merges_classes_by_name(
    synthetic_collection: list[Path], tmp_path: Path
) -> None:
    trainer = Trainer(_config(synthetic_collection, tmp_path / "naive", label_mode="naive"))
    network = trainer.fit()
    assert network.class_names == [
        "merged/liver",
        "merged/liver_tumor",
        "merged/spleen",
        "merged/kidney_left",
        "merged/kidney_right",
    ]


def test_loss_decreases_on_synthetic_data(synthetic_collection: list[Path], tmp_path: Path) -> None:
    config = _config(
        synthetic_collection, tmp_path / "run", epochs=4, iterations_per_epoch=6, augment=False
    )
    trainer = Trainer(config)
    trainer.fit()
    losses = [record["loss"] for record in trainer.history]
    assert losses[-1] < losses[0]


def _registry() -> LabelRegistry:
    registry = LabelRegistry()
    registry.add_dataset("A", {"liver": [1, 2], "tumor": [2]})
    registry.add_dataset("B", {"spleen": [1], "liver": [2]})
    return registry


def test_partial_targets_leave_other_datasets_unannotated() -> None:
    labels = torch.tensor([[[[0, 1, 2]]], [[[0, 1, 2]]]])
    targets, annotated = PartialTargets(_registry())(labels, ["A", "B"])
    assert annotated.tolist() == [[True, True, False, False], [False, False, True, True]]
    assert targets[0, :, 0, 0].tolist() == [[0, 1, 1], [0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert targets[1, :, 0, 0].tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_naive_targets_count_unannotated_classes_as_background() -> None:
    merge = NaiveMergeTargets(_registry())
    labels = torch.tensor([[[[0, 1, 2]]], [[[0, 1, 2]]]])
    targets, annotated = merge(labels, ["A", "B"])
    assert merge.class_names == ["merged/liver", "merged/tumor", "merged/spleen"]
    assert annotated.all()
    assert targets[0, :, 0, 0].tolist() == [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert targets[1, :, 0, 0].tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one dataset"):
        TrainingConfig(datasets=[], output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="label_mode"):
        TrainingConfig(datasets=["x"], output_dir=str(tmp_path), label_mode="merged")
    with pytest.raises(ValueError, match="epochs"):
        TrainingConfig(datasets=["x"], output_dir=str(tmp_path), epochs=0)


def test_cli_train_runs(synthetic_collection: list[Path], tmp_path: Path) -> None:
    arguments = [
        "train",
        "-o",
        str(tmp_path / "cli"),
        "--patch-size",
        "16,32,32",
        "--epochs",
        "1",
        "--iterations",
        "2",
        "--features",
        "4,8",
        "--no-progress",
    ]
    for folder in synthetic_collection:
        arguments += ["--dataset", str(folder)]
    assert main(arguments) == 0
    assert (tmp_path / "cli" / "model" / "model.safetensors").is_file()


def test_cli_train_missing_dataset_reports_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["train", "--dataset", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")])
    assert status == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0), (float("nan"), 1.0, 1.0)])
def test_config_rejects_invalid_spacing(tmp_path: Path, spacing: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="spacing must be three positive numbers"):
        TrainingConfig(datasets=["x"], output_dir=str(tmp_path), spacing=spacing)


@pytest.mark.parametrize("device", ["cuda", "foo"])
def test_cli_predict_rejects_unavailable_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    status = main(
        [
            "predict",
            "-i",
            str(tmp_path),
            "-o",
            str(tmp_path / "out"),
            "-m",
            str(tmp_path),
            "--device",
            device,
        ]
    )
    assert status == 2
    assert "--device" in capsys.readouterr().err


def test_extra_feature_stages_logged(caplog: pytest.LogCaptureFixture) -> None:
    from partialseg.data.preprocessing import Preprocessing
    from partialseg.training.network import _plan_topology

    preprocessing = Preprocessing(
        spacing=(1.0, 1.0, 1.0),
        patch_size=(8, 8, 8),
        ct_clip=(-1000.0, 1000.0),
        ct_mean=0.0,
        ct_std=1.0,
    )
    with caplog.at_level("WARNING", logger="partialseg.training.network"):
        model_args = _plan_topology(preprocessing, [4, 8, 16, 32, 64, 128])
    used_features = model_args["features_per_stage"]
    assert len(used_features) < 6
    assert f"using {used_features}" in caplog.text
    assert "lists 6 stages" in caplog.text


def test_fitting_feature_stages_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    from partialseg.data.preprocessing import Preprocessing
    from partialseg.training.network import _plan_topology

    preprocessing = Preprocessing(
        spacing=(1.0, 1.0, 1.0),
        patch_size=(32, 32, 32),
        ct_clip=(-1000.0, 1000.0),
        ct_mean=0.0,
        ct_std=1.0,
    )
    with caplog.at_level("WARNING", logger="partialseg.training.network"):
        model_args = _plan_topology(preprocessing, [4, 8])
    assert model_args["features_per_stage"] == [4, 8]
    assert caplog.text == ""
