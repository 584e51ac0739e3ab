"""Fine-tuning a pretrained model on new datasets with the heads, warm-up and poly phases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from partialseg.cli import main
from partialseg.hub import from_pretrained
from partialseg.training import (
    Callback,
    FineTuneConfig,
    FineTuner,
    Trainer,
    TrainingConfig,
)

KEPT = "DatasetS2_SpleenKidney"
NEW = "DatasetS3_LiverKidney"


class EpochSnapshots(Callback):
    """Copies the network's state dict after every epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.states.append(state_of(trainer.network))


def state_of(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in network.state_dict().items()}


def finetune_config(
    pretrained: Path, collection: list[Path], output: Path, **overrides
) -> FineTuneConfig:
    options = {
        "pretrained": str(pretrained),
        "datasets": [str(folder) for folder in collection[1:]],
        "output_dir": str(output),
        "head_epochs": 1,
        "warmup_epochs": 1,
        "epochs": 1,
        "iterations_per_epoch": 2,
        "device": "cpu",
        "progress": False,
    }
    options.update(overrides)
    return FineTuneConfig(**options)


@pytest.fixture(scope="module")
def finetuned(
    pretrained_model: Path,
    synthetic_collection: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[FineTuner, dict[str, torch.Tensor], EpochSnapshots]:
    """A fine-tuning run of one epoch per phase, with its initial state and epoch states."""
    snapshots = EpochSnapshots()
    output = tmp_path_factory.mktemp("finetuned")
    tuner = FineTuner(
        finetune_config(pretrained_model, synthetic_collection, output), callbacks=[snapshots]
    )
    tuner.setup()
    initial = state_of(tuner.network)
    tuner.fit()
    return tuner, initial, snapshots


def is_head(key: str) -> bool:
    return key.startswith("heads.")


def test_preprocessing_comes_from_pretrained(finetuned, pretrained_model: Path) -> None:
    tuner, _, _ = finetuned
    pretrained = from_pretrained(pretrained_model)
    assert tuner.preprocessing == pretrained.preprocessing
    assert tuner.network.preprocessing == pretrained.preprocessing


def test_classes_are_those_of_new_datasets(finetuned) -> None:
    tuner, _, _ = finetuned
    assert tuner.network.class_names == [
        f"{KEPT}/spleen",
        f"{KEPT}/kidney_left",
        f"{KEPT}/kidney_right",
        f"{NEW}/liver",
        f"{NEW}/kidney_left",
        f"{NEW}/kidney_right",
    ]


def test_kept_heads_start_at_pretrained_rows(finetuned, pretrained_model: Path) -> None:
    tuner, initial, _ = finetuned
    pretrained = from_pretrained(pretrained_model)
    old_rows = pretrained.heads.weight[0]
    for row, name in enumerate(tuner.network.class_names):
        start = initial["heads.weight.0"][row]
        if name.startswith(KEPT):
            assert torch.equal(start, old_rows[pretrained.class_names.index(name)]), name
        else:
            assert not any(torch.equal(start, old_row) for old_row in old_rows), name
    for key, value in pretrained.state_dict().items():
        if not is_head(key):
            assert torch.equal(initial[key], value), key


def test_heads_phase_trains_only_heads(finetuned) -> None:
    _, initial, snapshots = finetuned
    after_heads = snapshots.states[0]
    backbone = [key for key in initial if not is_head(key)]
    assert backbone
    for key in backbone:
        assert torch.equal(after_heads[key], initial[key]), key
    assert not torch.equal(after_heads["heads.weight.0"], initial["heads.weight.0"])


def test_warmup_phase_trains_backbone(finetuned) -> None:
    _, initial, snapshots = finetuned
    after_warmup = snapshots.states[1]
    changed = [key for key in initial if not torch.equal(after_warmup[key], initial[key])]
    assert any(not is_head(key) for key in changed)


def test_phases_and_learning_rates(finetuned) -> None:
    tuner, _, _ = finetuned
    assert [record["phase"] for record in tuner.history] == ["heads", "warmup", "poly"]
    assert [record["lr"] for record in tuner.history] == [5e-4, 1e-2, 1e-2]
    assert type(tuner.optimizer.heads).__name__ == "AdamW"
    assert tuner.optimizer.heads.defaults["amsgrad"] is True
    assert tuner.optimizer.network.defaults["nesterov"] is True


def test_saved_model_has_new_registry(finetuned) -> None:
    tuner, _, _ = finetuned
    loaded = from_pretrained(tuner.output_dir / "model")
    assert loaded.class_names == tuner.network.class_names
    assert loaded.label_registry.dataset_names == [KEPT, NEW]
    assert loaded.preprocessing == tuner.preprocessing


def test_resume_after_heads_phase_matches(
    finetuned, pretrained_model: Path, synthetic_collection: list[Path], tmp_path: Path
) -> None:
    tuner, _, _ = finetuned
    config = finetune_config(pretrained_model, synthetic_collection, tmp_path)
    FineTuner(config).fit(stop_after_epoch=1)

    resumed = FineTuner(config)
    resumed.fit(resume=True)

    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in tuner.history]
    for key, value in tuner.network.state_dict().items():
        torch.testing.assert_close(resumed.network.state_dict()[key], value)


def test_trainer_rejects_finetune_config(
    pretrained_model: Path, synthetic_collection: list[Path], tmp_path: Path
) -> None:
    config = finetune_config(pretrained_model, synthetic_collection, tmp_path)
    with pytest.raises(TypeError, match="FineTuner"):
        Trainer(config)
    with pytest.raises(TypeError, match="FineTuneConfig"):
        FineTuner(TrainingConfig(datasets=["x"], output_dir=str(tmp_path)))


def test_config_rejects_negative_phase(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_epochs must be a non-negative int, got -1"):
        FineTuneConfig(pretrained="m", datasets=["x"], output_dir=str(tmp_path), head_epochs=-1)


def test_cli_finetune_runs(
    pretrained_model: Path, synthetic_collection: list[Path], tmp_path: Path
) -> None:
    output = tmp_path / "tuned"
    status = main(
        [
            "finetune",
            "--pretrained",
            str(pretrained_model),
            "--dataset",
            str(synthetic_collection[2]),
            "-o",
            str(output),
            "--head-epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--epochs",
            "1",
            "--iterations",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )

    assert status == 0
    config = json.loads((output / "training_config.json").read_text())
    assert config["pretrained"] == str(pretrained_model)
    log = json.loads((output / "training_log.json").read_text())
    assert [record["phase"] for record in log["epochs"]] == ["heads", "poly"]
    assert from_pretrained(output / "model").class_names == [
        f"{NEW}/liver",
        f"{NEW}/kidney_left",
        f"{NEW}/kidney_right",
    ]


def test_cli_finetune_missing_model(
    synthetic_collection: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["finetune", "--pretrained", str(tmp_path / "no_model")]
    arguments += ["--dataset", str(synthetic_collection[2]), "-o", str(tmp_path / "out")]
    status = main(arguments)
    assert status == 2
    assert "no_model" in capsys.readouterr().err
