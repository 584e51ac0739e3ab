"""Checkpoints and resuming: exact continuation, a killed process, rejected resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from partialseg.cli import main
from partialseg.training import Trainer, TrainingConfig, latest_checkpoint, read_checkpoint
from partialseg.training.checkpoint import (
    Checkpoint,
    capture_random_state,
    restore_random_state,
    write_checkpoint,
)

EPOCHS = 4


@pytest.fixture(scope="module")
def straight_run(
    make_config: Callable[..., TrainingConfig], tmp_path_factory: pytest.TempPathFactory
) -> Trainer:
    """Four epochs without interruption, with augmentation on."""
    trainer = Trainer(make_config(tmp_path_factory.mktemp("straight"), epochs=EPOCHS))
    trainer.fit()
    return trainer


def assert_same_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, msg=lambda m, key=key: f"{key}: {m}")


def losses_of(history: list[dict]) -> list[tuple]:
    return [(record["epoch"], record["loss"], record["lr"]) for record in history]


def test_resume_equals_uninterrupted_run(
    straight_run: Trainer, make_config: Callable[..., TrainingConfig], tmp_path: Path
) -> None:
    config = make_config(tmp_path, epochs=EPOCHS)
    Trainer(config).fit(stop_after_epoch=2)
    assert read_checkpoint(tmp_path).epoch == 2

    resumed = Trainer(config)
    resumed.fit(resume=True)

    assert resumed.epoch == EPOCHS
    assert losses_of(resumed.history) == losses_of(straight_run.history)
    assert_same_weights(resumed.network.state_dict(), straight_run.network.state_dict())


def test_resume_with_workers_equals_uninterrupted_run(
    make_config: Callable[..., TrainingConfig], tmp_path: Path
) -> None:
    config = make_config(tmp_path / "straight", num_workers=2)
    straight = Trainer(config)
    straight.fit()
    interrupted = make_config(tmp_path / "interrupted", num_workers=2)
    Trainer(interrupted).fit(stop_after_epoch=1)

    resumed = Trainer(interrupted)
    resumed.fit(resume=True)

    assert losses_of(resumed.history) == losses_of(straight.history)
    assert_same_weights(resumed.network.state_dict(), straight.network.state_dict())


def test_killed_cli_run_resumes(
    straight_run: Trainer, cli_options: list[str], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "run"
    command = [sys.executable, "-m", "partialseg", "train", "-o", str(output)]
    command += ["--epochs", str(EPOCHS), *cli_options]
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env
        )
        try:
            deadline = time.monotonic() + 300
            pointer = output / "checkpoint" / "latest.json"
            while not pointer.is_file():
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.02)
            # The first checkpoint is complete, so the process is training epoch 2 or
            # still removing the files it replaced.
            assert process.poll() is None, "the run ended before it could be killed"
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    interrupted_at = read_checkpoint(output).epoch
    assert 1 <= interrupted_at < EPOCHS
    status = main(["train", "-o", str(output), "--epochs", str(EPOCHS), *cli_options, "--resume"])

    assert status == 0
    log = json.loads((output / "training_log.json").read_text())
    assert [record["epoch"] for record in log["epochs"]] == list(range(1, EPOCHS + 1))
    assert read_checkpoint(output).epoch == EPOCHS
    weights = load_file(output / "model" / "model.safetensors")
    assert_same_weights(weights, straight_run.network.state_dict())


def test_checkpoint_contains_last_epoch(straight_run: Trainer) -> None:
    folder = latest_checkpoint(straight_run.output_dir)
    assert folder.name.startswith(f"epoch_{EPOCHS:04d}-")
    assert sorted(path.name for path in folder.iterdir()) == [
        "model.safetensors",
        "optimizer.pt",
        "random_state.safetensors",
        "trainer_state.json",
    ]
    assert [path.name for path in folder.parent.iterdir() if path.is_dir()] == [folder.name]

    checkpoint = read_checkpoint(straight_run.output_dir)
    assert checkpoint.epoch == EPOCHS
    assert checkpoint.trainer_state["sampler_epoch"] == EPOCHS - 1
    assert losses_of(checkpoint.trainer_state["history"]) == losses_of(straight_run.history)
    assert_same_weights(checkpoint.model, straight_run.network.state_dict())
    momentum = checkpoint.optimizer["state"][0]["momentum_buffer"]
    assert momentum.abs().sum() > 0


def test_resume_rejects_changed_seed(
    straight_run: Trainer, make_config: Callable[..., TrainingConfig]
) -> None:
    config = make_config(straight_run.output_dir, epochs=EPOCHS, seed=1)
    with pytest.raises(ValueError, match="seed: saved 0, given 1"):
        Trainer(config).fit(resume=True)


def test_fit_rejects_unfinished_run(
    make_config: Callable[..., TrainingConfig], tmp_path: Path
) -> None:
    config = make_config(tmp_path, epochs=2, iterations_per_epoch=1)
    Trainer(config).fit(stop_after_epoch=1)

    with pytest.raises(FileExistsError, match=r"unfinished run \(epoch 1 of 2\).*--resume"):
        Trainer(config).fit()
    assert read_checkpoint(tmp_path).epoch == 1


def test_fit_replaces_finished_run(
    make_config: Callable[..., TrainingConfig], tmp_path: Path
) -> None:
    config = make_config(tmp_path, epochs=1, iterations_per_epoch=1)
    Trainer(config).fit()

    again = Trainer(config)
    again.fit()

    assert [record["epoch"] for record in again.history] == [1]
    assert read_checkpoint(tmp_path).epoch == 1


def test_resume_without_checkpoint(
    make_config: Callable[..., TrainingConfig], tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(make_config(tmp_path)).fit(resume=True)


def small_checkpoint(epoch: int) -> Checkpoint:
    state = capture_random_state(np.random.default_rng(epoch))
    return Checkpoint(epoch, {"w": torch.full((2,), float(epoch))}, {}, None, {}, [state])


def test_write_keeps_only_newest_folder(tmp_path: Path) -> None:
    stale = tmp_path / "checkpoint" / ".epoch_0002-deadbeef.partial"
    stale.mkdir(parents=True)
    write_checkpoint(tmp_path, small_checkpoint(1))
    newest = write_checkpoint(tmp_path, small_checkpoint(2))

    folders = [path for path in (tmp_path / "checkpoint").iterdir() if path.is_dir()]
    assert folders == [newest]
    assert read_checkpoint(tmp_path).model["w"].tolist() == [2.0, 2.0]


def test_pointer_to_missing_folder_is_reported(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path, small_checkpoint(1))
    folder.rename(folder.with_name("moved"))

    with pytest.raises(ValueError, match=f"names the folder '{folder.name}'"):
        read_checkpoint(tmp_path)


def test_random_states_survive_writing(tmp_path: Path) -> None:
    patch_rng = np.random.default_rng(7)
    checkpoint = small_checkpoint(3)
    checkpoint.random_states = [capture_random_state(patch_rng)]
    expected = (torch.rand(3), np.random.rand(), patch_rng.random())
    write_checkpoint(tmp_path, checkpoint)

    fresh_rng = np.random.default_rng(0)
    restore_random_state(read_checkpoint(tmp_path).random_states[0], fresh_rng)

    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand() == expected[1]
    assert fresh_rng.random() == expected[2]


def test_optimizer_file_loads_without_pickle(straight_run: Trainer) -> None:
    folder = latest_checkpoint(straight_run.output_dir)
    state = torch.load(folder / "optimizer.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["nesterov"] is True
    assert state["grad_scaler"] is None


def test_resume_accepts_same_dataset_by_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from partialseg.training.config import check_resumable

    (tmp_path / "Dataset001_Liver").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = TrainingConfig(datasets=["Dataset001_Liver"], output_dir="run").to_dict()
    resumed = TrainingConfig(datasets=[str(tmp_path / "Dataset001_Liver")], output_dir="run")
    check_resumable("TrainingConfig", saved, resumed, source="run")


def test_resume_rejects_other_dataset_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from partialseg.training.config import check_resumable

    monkeypatch.chdir(tmp_path)
    saved = TrainingConfig(datasets=["Dataset001_Liver"], output_dir="run").to_dict()
    resumed = TrainingConfig(datasets=[str(tmp_path / "Dataset002_Spleen")], output_dir="run")
    with pytest.raises(ValueError, match="datasets: saved"):
        check_resumable("TrainingConfig", saved, resumed, source="run")
