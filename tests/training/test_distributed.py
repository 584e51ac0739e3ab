"""Training with DistributedDataParallel on two gloo processes, compared with one process.

The exact equalities, up to float rounding: for the same patches, the loss that
every rank returns equals the single-process loss of the concatenated global
batch, and the parameter gradients after DDP's averaging equal the
single-process gradients (see PartialLabelLoss). So a single process that is fed
the ranks' batches, concatenated in rank order, reaches the same weights. A
single-process run with the same seed does not, because every rank crops and
augments with its own seed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from partialseg.sampling import DatasetBalancedSampler
from partialseg.training import Callback, Trainer, TrainingConfig, read_checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")
WORLD_SIZE = 2
EPOCHS = 2


def torchrun(arguments: list[str], env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD_SIZE}", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]


@pytest.fixture(scope="module")
def ddp_output(
    synthetic_collection: list[Path],
    subprocess_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    output = tmp_path_factory.mktemp("ddp")
    torchrun([str(WORKER), str(output), *map(str, synthetic_collection)], subprocess_env)
    return output


def weights(output: Path, name: str, rank: int) -> dict[str, torch.Tensor]:
    return load_file(output / f"{name}_rank{rank}.safetensors")


def steps_of(output: Path, rank: int) -> list[dict]:
    return torch.load(output / f"steps_rank{rank}.pt", weights_only=True)


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, trainer: Trainer, batch: dict, loss: float) -> None:
        self.losses.append(loss)


@pytest.mark.parametrize(
    "name", ["initial", "straight", "resumed", "tune_initial", "tune_heads", "tune_final"]
)
def test_ranks_have_identical_weights(ddp_output: Path, name: str) -> None:
    rank0 = weights(ddp_output, name, 0)
    rank1 = weights(ddp_output, name, 1)
    assert sorted(rank0) == sorted(rank1)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


def test_ranks_draw_disjoint_shares(
    ddp_output: Path, make_config: Callable[..., TrainingConfig], tmp_path: Path
) -> None:
    trainer = Trainer(make_config(tmp_path, epochs=EPOCHS))
    trainer.setup()
    per_rank = trainer.config.iterations_per_epoch * trainer.config.batch_size
    sampler = DatasetBalancedSampler(
        [case.dataset for case in trainer.cases], num_samples=per_rank * WORLD_SIZE, seed=0
    )
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        draw = list(sampler)
        for rank in range(WORLD_SIZE):
            steps = [step for step in steps_of(ddp_output, rank) if step["epoch"] == epoch]
            datasets = [name for step in steps for name in step["dataset"]]
            expected = [trainer.cases[index].dataset for index in draw[rank::WORLD_SIZE]]
            assert datasets == expected, (epoch, rank)


def test_loss_matches_single_process(
    ddp_output: Path, make_config: Callable[..., TrainingConfig], tmp_path: Path
) -> None:
    rank_steps = [steps_of(ddp_output, rank) for rank in range(WORLD_SIZE)]
    recorder = LossRecorder()
    trainer = Trainer(make_config(tmp_path, epochs=EPOCHS), callbacks=[recorder])
    trainer.setup()
    trainer.network.load_state_dict(weights(ddp_output, "initial", 0))

    for epoch in range(EPOCHS):
        trainer.loader = [
            {
                "image": torch.cat([step["image"] for step in shares]),
                "label": torch.cat([step["label"] for step in shares]),
                "dataset": [name for step in shares for name in step["dataset"]],
            }
            for shares in zip(*rank_steps, strict=True)
            if shares[0]["epoch"] == epoch
        ]
        trainer.train_epoch(epoch)

    assert len(recorder.losses) == EPOCHS * trainer.config.iterations_per_epoch
    for step, single_loss in enumerate(recorder.losses):
        for rank in range(WORLD_SIZE):
            rank_loss = rank_steps[rank][step]["loss"]
            assert rank_loss == pytest.approx(single_loss, rel=1e-5), (step, rank)
    # Summation order differs between the all-reduce and one batch, and Nesterov
    # momentum carries those rounding differences (about 1e-6 here) into later steps.
    straight = weights(ddp_output, "straight", 0)
    for key, value in trainer.network.state_dict().items():
        torch.testing.assert_close(value, straight[key], rtol=1e-4, atol=1e-5)


def test_resume_under_ddp_matches_straight(ddp_output: Path) -> None:
    straight = weights(ddp_output, "straight", 0)
    resumed = weights(ddp_output, "resumed", 0)
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value)
    checkpoint = read_checkpoint(ddp_output / "resumed")
    assert checkpoint.trainer_state["world_size"] == WORLD_SIZE
    assert len(checkpoint.random_states) == WORLD_SIZE


def test_heads_phase_under_ddp_keeps_backbone(ddp_output: Path) -> None:
    initial = weights(ddp_output, "tune_initial", 0)
    after_heads = weights(ddp_output, "tune_heads", 0)
    final = weights(ddp_output, "tune_final", 0)
    backbone = [key for key in initial if not key.startswith("heads.")]
    for key in backbone:
        assert torch.equal(after_heads[key], initial[key]), key
    assert not torch.equal(after_heads["heads.weight.0"], initial["heads.weight.0"])
    assert any(not torch.equal(final[key], initial[key]) for key in backbone)


def test_cli_train_under_torchrun(
    cli_options: list[str], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "run"
    arguments = ["-m", "partialseg", "train", "-o", str(output), "--epochs", "1", *cli_options]
    torchrun(arguments, subprocess_env)

    log = json.loads((output / "training_log.json").read_text())
    assert [record["epoch"] for record in log["epochs"]] == [1]
    assert (output / "model" / "model.safetensors").is_file()
    assert read_checkpoint(output).trainer_state["world_size"] == WORLD_SIZE
