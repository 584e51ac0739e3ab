"""One rank of a two-process gloo training run, started with torch.distributed.run.

``test_distributed.py`` starts two of these and compares what they save with
single-process runs. Each rank:

1. trains two epochs, recording every batch it trained on and the loss value;
2. trains one epoch in another folder, then resumes that run for the second epoch;
3. fine-tunes the model of step 1 for one heads epoch and one poly epoch.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py
       OUTPUT_DIR DATASET...
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from partialseg.training import Callback, FineTuneConfig, FineTuner, Trainer, TrainingConfig

TINY = {
    "patch_size": (16, 32, 32),
    "iterations_per_epoch": 2,
    "batch_size": 2,
    "model_args": {"features_per_stage": [4, 8]},
    "device": "cpu",
    "progress": False,
}


class StepRecorder(Callback):
    """Keeps every batch a rank trained on, with the loss value it returned."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, trainer, batch, loss):
        self.steps.append(
            {
                "epoch": trainer.epoch,
                "image": batch["image"].clone(),
                "label": batch["label"].clone(),
                "dataset": list(batch["dataset"]),
                "loss": loss,
            }
        )


class EpochSnapshots(Callback):
    def __init__(self):
        self.states = []

    def on_epoch_end(self, trainer, record):
        self.states.append({k: v.detach().clone() for k, v in trainer.network.state_dict().items()})


def save_state(state, path):
    save_file({key: value.contiguous() for key, value in state.items()}, path)


def main():
    output, datasets = Path(sys.argv[1]), sys.argv[2:]
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    recorder = StepRecorder()
    config = TrainingConfig(
        datasets=datasets, output_dir=str(output / "straight"), epochs=2, **TINY
    )
    trainer = Trainer(config, callbacks=[recorder])
    trainer.setup()
    save_state(trainer.network.state_dict(), output / f"initial_rank{rank}.safetensors")
    trainer.fit()
    torch.save(recorder.steps, output / f"steps_rank{rank}.pt")
    save_state(trainer.network.state_dict(), output / f"straight_rank{rank}.safetensors")

    resumed_config = TrainingConfig(
        datasets=datasets, output_dir=str(output / "resumed"), epochs=2, **TINY
    )
    Trainer(resumed_config).fit(stop_after_epoch=1)
    resumed = Trainer(resumed_config)
    resumed.fit(resume=True)
    save_state(resumed.network.state_dict(), output / f"resumed_rank{rank}.safetensors")

    snapshots = EpochSnapshots()
    tune_options = {
        key: value for key, value in TINY.items() if key not in ("patch_size", "model_args")
    }
    tune_config = FineTuneConfig(
        pretrained=str(output / "straight" / "model"),
        datasets=datasets[1:],
        output_dir=str(output / "finetuned"),
        head_epochs=1,
        warmup_epochs=0,
        epochs=1,
        **tune_options,
    )
    tuner = FineTuner(tune_config, callbacks=[snapshots])
    tuner.setup()
    save_state(tuner.network.state_dict(), output / f"tune_initial_rank{rank}.safetensors")
    tuner.fit()
    save_state(snapshots.states[0], output / f"tune_heads_rank{rank}.safetensors")
    save_state(snapshots.states[1], output / f"tune_final_rank{rank}.safetensors")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
