"""The training loop that wires registry, sampler, patches, network and loss together."""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from partialseg.data.cases import ct_statistics, load_cases, median_spacing
from partialseg.data.nnunet import Case, read_raw_dataset
from partialseg.data.preprocessing import Preprocessing
from partialseg.losses import PartialLabelLoss
from partialseg.nn.base import SegmentationNetwork
from partialseg.schedules import FineTuningOptimizers, WarmupSchedule
from partialseg.training.callbacks import Callback
from partialseg.training.checkpoint import (
    Checkpoint,
    capture_random_state,
    checkpoint_progress,
    read_checkpoint,
    remove_checkpoint,
    restore_random_state,
    write_checkpoint,
    write_json_atomic,
)
from partialseg.training.config import FineTuneConfig, TrainingConfig, check_resumable
from partialseg.training.data import build_patch_loader, build_registry
from partialseg.training.distributed import (
    DistributedContext,
    barrier,
    close_distributed,
    gather_to_main,
    init_distributed,
    wrap_model,
)
from partialseg.training.network import build_network
from partialseg.training.targets import NaiveMergeTargets, PartialTargets

logger = logging.getLogger(__name__)


class Trainer:
    """Trains a network on a collection of partially labeled datasets.

    After every epoch the model folder, the training log and a checkpoint are
    written to ``config.output_dir``. ``fit(resume=True)`` continues from the
    checkpoint with the same result as an uninterrupted run. Under ``torchrun``
    each process trains on its own share of every global batch with
    DistributedDataParallel, and the loss pools its Dice statistics over all
    processes. Only rank 0 writes files, logs and progress bars.

    Args:
        config: The run's configuration.
        callbacks: Hooks called after each step and epoch.

    Raises:
        TypeError: If ``config`` is a :class:`FineTuneConfig`; use ``FineTuner``.

    Example:
        >>> import tempfile
        >>> from partialseg.data.synthetic import make_synthetic_collection
        >>> root = Path(tempfile.mkdtemp())
        >>> folders = make_synthetic_collection(root / "data", cases_per_dataset=(1, 1, 1))
        >>> config = TrainingConfig(
        ...     datasets=[str(folder) for folder in folders], output_dir=str(root / "run"),
        ...     patch_size=(16, 32, 32), epochs=1, iterations_per_epoch=1,
        ...     model_args={"features_per_stage": [4, 8]}, device="cpu", progress=False)
        >>> network = Trainer(config).fit()
        >>> network.num_classes, sorted(path.name for path in (root / "run").iterdir())
        (9, ['checkpoint', 'model', 'training_config.json', 'training_log.json'])
    """

    def __init__(
        self, config: TrainingConfig | FineTuneConfig, *, callbacks: list[Callback] | None = None
    ) -> None:
        if isinstance(config, FineTuneConfig) and type(self) is Trainer:
            raise TypeError(
                "Trainer got a FineTuneConfig; use partialseg.training.FineTuner(config) "
                "to fine-tune a pretrained model"
            )
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.callbacks = list(callbacks or [])
        self.history: list[dict[str, Any]] = []
        self.epoch = 0

    @property
    def is_main(self) -> bool:
        """True in the process that writes files and logs (rank 0)."""
        return self.context.is_main

    def setup(self) -> None:
        """Read the datasets, preprocess them, and build network, loss, optimizer and loader."""
        config = self.config
        self.context: DistributedContext = init_distributed(config.device)
        self.device = self.context.device
        torch.manual_seed(config.seed)
        datasets = [read_raw_dataset(path) for path in config.datasets]
        self.registry = build_registry(datasets)
        cases = [case for dataset in datasets for case in dataset.cases]

        self.network = self._prepare_network_and_cases(cases).to(self.device)
        self.loss = PartialLabelLoss()
        self.schedule, self.optimizer = self._build_optimization()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=_needs_scaler(self))
        self.model = wrap_model(
            self.network, self.context, find_unused_parameters=self._has_unused_parameters()
        )
        self.loader, self.patches, self.sampler = build_patch_loader(
            self.cases,
            self.preprocessing,
            batch_size=config.batch_size,
            iterations_per_epoch=config.iterations_per_epoch,
            alpha=config.alpha,
            foreground_fraction=config.foreground_fraction,
            augment=config.augment,
            num_workers=config.num_workers,
            seed=config.seed,
            num_replicas=self.context.world_size,
            rank=self.context.rank,
        )

    def _prepare_network_and_cases(self, cases: list[Case]) -> SegmentationNetwork:
        """Set preprocessing, cases and targets; return the network to train."""
        config = self.config
        spacing = config.spacing or median_spacing(cases)
        logger.info("target spacing (z, y, x): %s mm", tuple(round(s, 3) for s in spacing))
        self.cases = load_cases(
            cases, spacing, self.registry, seed=config.seed, progress=self._progress
        )
        clip, mean, std = ct_statistics(self.cases, seed=config.seed)
        self.preprocessing = Preprocessing(
            spacing=spacing, patch_size=config.patch_size, ct_clip=clip, ct_mean=mean, ct_std=std
        )
        for case in self.cases:
            case.image = self.preprocessing.normalize(case.image)
        logger.info("CT clip %s, mean %.2f, std %.2f", tuple(round(v, 1) for v in clip), mean, std)

        if config.label_mode == "naive":
            self.targets = NaiveMergeTargets(self.registry)
        else:
            self.targets = PartialTargets(self.registry)
        registry = self.registry if config.label_mode == "partial" else None
        return build_network(
            config,
            class_names=self.targets.class_names,
            registry=registry,
            preprocessing=self.preprocessing,
        )

    def _build_optimization(self) -> tuple[WarmupSchedule, Any]:
        """Return the learning-rate schedule and the optimizer it drives."""
        config = self.config
        schedule = WarmupSchedule(
            head_epochs=0,
            warmup_epochs=0,
            base_lr=config.learning_rate,
            poly_epochs=config.epochs,
        )
        optimizer = torch.optim.SGD(
            self.network.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
        return schedule, optimizer

    def _has_unused_parameters(self) -> bool:
        """Return whether some parameters get no gradient in some steps (for DDP)."""
        if isinstance(self.optimizer, FineTuningOptimizers):
            return True
        # The loss gives the lowest of several deep-supervision levels weight 0.
        levels = getattr(getattr(self.network, "heads", None), "num_levels", 2)
        return levels > 1

    def fit(
        self, *, resume: bool = False, stop_after_epoch: int | None = None
    ) -> SegmentationNetwork:
        """Train to the end of the schedule and return the trained network.

        Args:
            resume: Continue from the checkpoint in ``output_dir``. The configuration
                must equal the checkpoint's, except for the fields in
                :data:`~partialseg.training.config.RESUMABLE_CHANGES`.
            stop_after_epoch: Return once this many epochs (counted from the start
                of the run) are complete, leaving a checkpoint to resume from.

        Returns:
            The network (not the DDP wrapper).

        Raises:
            FileExistsError: If ``output_dir`` contains the checkpoint of an unfinished
                run and ``resume`` is false. A finished run's checkpoint is replaced.
            FileNotFoundError: If ``resume`` is true and there is no checkpoint.
            ValueError: If the checkpoint's configuration differs from ``config``.
            FloatingPointError: If the loss of an epoch is not finite.
        """
        if not hasattr(self, "network"):
            self.setup()
        if resume:
            self.load_checkpoint()
        else:
            self._replace_finished_run()
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.output_dir / "training_config.json", self.config.to_dict())

        last_epoch = self.schedule.total_epochs
        if stop_after_epoch is not None:
            last_epoch = min(last_epoch, stop_after_epoch)
        if self.epoch >= self.schedule.total_epochs:
            logger.info("the run in %s is already complete", self.output_dir)
        start = time.perf_counter()
        while self.epoch < last_epoch:
            record = self.train_epoch(self.epoch)
            self.history.append(record)
            self.epoch += 1
            self._log_epoch(record)
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
            self.save()
            self.save_checkpoint()
        logger.info(
            "training stopped after epoch %d of %d (%.1f s)",
            self.epoch,
            self.schedule.total_epochs,
            time.perf_counter() - start,
        )
        if self.epoch >= self.schedule.total_epochs:
            close_distributed(self.context)
        return self.network

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch and return its log record (epoch, phase, loss, lr, seconds)."""
        self.epoch = epoch
        phase = self.schedule.apply(self.optimizer, epoch)
        self.sampler.set_epoch(epoch)
        self.model.train()

        start = time.perf_counter()
        losses = []
        batches = tqdm(
            self.loader,
            desc=f"epoch {epoch + 1}",
            unit="it",
            leave=False,
            disable=not self._progress,
        )
        for batch in batches:
            losses.append(self.train_step(batch))
            batches.set_postfix(loss=f"{losses[-1]:.3f}")
            for callback in self.callbacks:
                callback.on_step_end(self, batch, losses[-1])

        mean_loss = float(np.mean(losses))
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"training loss became {mean_loss} in epoch {epoch + 1}; lower the learning "
                "rate or check the input intensities"
            )
        return {
            "epoch": epoch + 1,
            "phase": phase,
            "loss": mean_loss,
            "lr": self.schedule.lr_at(epoch),
            "seconds": time.perf_counter() - start,
        }

    def train_step(self, batch: dict[str, Any]) -> float:
        """Run one optimizer step on a batch and return the loss value.

        Under DDP the value is the loss of the global batch, the same on every rank.
        """
        image = batch["image"].to(self.device)
        targets, annotated = self.targets(batch["label"], batch["dataset"])
        targets = targets.to(self.device)
        annotated = annotated.to(self.device)

        with _autocast(self.device, self.config.mixed_precision):
            outputs = self.model(image)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        level_targets = [_resize_nearest(targets, output.shape[2:]) for output in outputs]
        loss = self.loss(outputs, level_targets, annotated)

        optimizer = self.active_optimizer()
        self.network.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        return float(loss.detach())

    def active_optimizer(self) -> torch.optim.Optimizer:
        """Return the optimizer that steps in the current epoch's phase."""
        if isinstance(self.optimizer, FineTuningOptimizers):
            return self.optimizer.optimizer_for(self.schedule.phase_at(self.epoch))
        return self.optimizer

    def save(self) -> Path:
        """Write the model folder and the training log to ``output_dir`` (rank 0 only)."""
        model_dir = self.output_dir / "model"
        if self.is_main:
            self.network.save_pretrained(model_dir)
            write_json_atomic(self.output_dir / "training_log.json", {"epochs": self.history})
        return model_dir

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the completed epochs; every rank must call this.

        Returns:
            The checkpoint folder on rank 0, None on the other ranks.
        """
        random_state = capture_random_state(self.patches.rng, self.patches.transform)
        random_states = gather_to_main(random_state, self.context)
        if not self.is_main:
            return None
        trainer_state = {
            "config": self.config.to_dict(),
            "config_type": type(self.config).__name__,
            "history": self.history,
            "schedule": self.schedule.state_dict(),
            "sampler_epoch": self.sampler.epoch,
            "world_size": self.context.world_size,
        }
        checkpoint = Checkpoint(
            epoch=self.epoch,
            model=self.network.state_dict(),
            optimizer=self.optimizer.state_dict(),
            grad_scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            trainer_state=trainer_state,
            random_states=random_states,
        )
        return write_checkpoint(self.output_dir, checkpoint)

    def load_checkpoint(self) -> int:
        """Restore the state of the newest checkpoint in ``output_dir``.

        Returns:
            The number of completed epochs, where training continues.

        Raises:
            FileNotFoundError: If there is no checkpoint.
            ValueError: If the checkpoint's configuration differs from ``config``.
        """
        checkpoint = read_checkpoint(self.output_dir, map_location=self.device)
        state = checkpoint.trainer_state
        check_resumable(state["config_type"], state["config"], self.config, source=self.output_dir)
        self.network.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        if checkpoint.grad_scaler is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint.grad_scaler)
        # The progress comes from the checkpoint and the phase lengths from the current
        # configuration, because the number of epochs may change on resume.
        schedule_state = dict(state["schedule"])
        current = self.schedule.state_dict()
        schedule_state.update(
            {k: v for k, v in current.items() if k not in ("last_epoch", "frozen")}
        )
        self.schedule.load_state_dict(schedule_state)
        self.sampler.set_epoch(state["sampler_epoch"])
        self.history = list(state["history"])
        self.epoch = checkpoint.epoch
        self._restore_random_state(checkpoint.random_states, saved_world_size=state["world_size"])
        logger.info("resuming %s after epoch %d", self.output_dir, self.epoch)
        return self.epoch

    def _restore_random_state(self, states: list[dict[str, Any]], *, saved_world_size: int) -> None:
        if saved_world_size != self.context.world_size:
            warnings.warn(
                f"the checkpoint was written by {saved_world_size} process(es) but "
                f"{self.context.world_size} resume it; training continues, but with other "
                "batches than an uninterrupted run",
                stacklevel=3,
            )
        if self.context.rank < len(states):
            restore_random_state(
                states[self.context.rank], self.patches.rng, self.patches.transform
            )

    def _replace_finished_run(self) -> None:
        """Raise if ``output_dir`` has an unfinished run, and delete a finished run's checkpoint.

        An unfinished run is kept because a missing ``--resume`` should not destroy
        it. A finished run is replaced, as running the same command twice would.
        """
        progress = checkpoint_progress(self.output_dir)
        if progress is None:
            return
        completed, total = progress
        if completed < total:
            raise FileExistsError(
                f"{self.output_dir} contains the checkpoint of an unfinished run (epoch "
                f"{completed} of {total}); resume it with resume=True (--resume on the command "
                "line), or choose another output folder"
            )
        barrier(self.context)
        if self.is_main:
            logger.warning(
                "replacing the finished run in %s (%d epochs) with a new run",
                self.output_dir,
                completed,
            )
            remove_checkpoint(self.output_dir)

    def _log_epoch(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        logger.info(
            "epoch %d/%d (%s): loss %.4f, lr %.2e, %.1f s",
            record["epoch"],
            self.schedule.total_epochs,
            record["phase"],
            record["loss"],
            record["lr"],
            record["seconds"],
        )

    @property
    def _progress(self) -> bool:
        return self.config.progress and self.context.is_main


def _needs_scaler(trainer: Trainer) -> bool:
    """Return whether training runs in float16 autocast, which needs gradient scaling.

    NOTE: only GPUs without bfloat16 take this path, and the CPU-only tests do not.
    """
    device = trainer.device
    if device.type != "cuda" or not trainer.config.mixed_precision:
        return False
    return not torch.cuda.is_bf16_supported()


def _resize_nearest(targets: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if targets.shape[2:] == size:
        return targets
    return F.interpolate(targets.float(), size=tuple(size), mode="nearest").to(targets.dtype)


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)
