"""The training loop that wires registry, sampler, patches, network and loss together."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from partialseg.data.augmentation import Augmentation
from partialseg.data.cases import LoadedCase, ct_statistics, load_cases, median_spacing
from partialseg.data.nnunet import RawDataset, read_raw_dataset
from partialseg.data.patches import PatchDataset, collate_patches
from partialseg.data.preprocessing import Preprocessing
from partialseg.labels import LabelRegistry
from partialseg.losses import PartialLabelLoss
from partialseg.nn import create_model, plan_topology
from partialseg.nn.base import SegmentationNetwork
from partialseg.sampling import DatasetBalancedSampler
from partialseg.training.config import TrainingConfig
from partialseg.training.targets import NaiveMergeTargets, PartialTargets

logger = logging.getLogger(__name__)


def build_registry(datasets: list[RawDataset]) -> LabelRegistry:
    """Build one label registry from the ``dataset.json`` files of several datasets.

    Raises:
        ValueError: Two datasets have the same name.
    """
    registry = LabelRegistry()
    for dataset in datasets:
        if dataset.name in registry.dataset_names:
            raise ValueError(
                f"dataset name {dataset.name!r} appears twice ({dataset.root}); "
                "dataset folders must have distinct names"
            )
        labels = LabelRegistry.from_dataset_json(dataset.metadata, dataset_name=dataset.name)
        declared = labels.dataset(dataset.name)
        registry.add_dataset(
            dataset.name, dict(declared.classes), label_values=declared.label_values
        )
    return registry


def poly_lr(initial: float, epoch: int, max_epochs: int, exponent: float = 0.9) -> float:
    """Return nnU-Net's polynomial learning rate ``initial * (1 - epoch / max_epochs) ** exponent``.

    Example:
        >>> poly_lr(0.01, 0, 1000), round(poly_lr(0.01, 500, 1000), 6)
        (0.01, 0.005359)
    """
    return initial * (1 - epoch / max_epochs) ** exponent


class Trainer:
    """Trains a network on a collection of partially labeled datasets.

    Args:
        config: The run's configuration.

    Example:
        >>> # doctest: +SKIP
        >>> config = TrainingConfig(datasets=["Dataset001_A", "Dataset002_B"], output_dir="run")
        >>> network = Trainer(config).fit()
    """

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.device = _resolve_device(config.device)
        self.history: list[dict[str, Any]] = []

    def setup(self) -> None:
        """Read the datasets, compute preprocessing, and build network, loss and optimizer."""
        config = self.config
        torch.manual_seed(config.seed)
        datasets = [read_raw_dataset(path) for path in config.datasets]
        self.registry = build_registry(datasets)
        all_cases = [case for dataset in datasets for case in dataset.cases]
        spacing = config.spacing or median_spacing(all_cases)
        logger.info("target spacing (z, y, x): %s mm", tuple(round(s, 3) for s in spacing))

        self.cases = load_cases(
            all_cases, spacing, self.registry, seed=config.seed, progress=config.progress
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
        self.network = self._build_network()
        self.loss = PartialLabelLoss()
        self.optimizer = torch.optim.SGD(
            self.network.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
        self.loader = self._build_loader(self.cases)

    def _build_network(self) -> SegmentationNetwork:
        config = self.config
        model_args = dict(config.model_args)
        if config.architecture == "plain_unet" and "strides" not in model_args:
            model_args.update(self._plan_topology(model_args.get("features_per_stage")))
        network = create_model(config.architecture, classes=self.targets.class_names, **model_args)
        network.label_registry = self.registry if config.label_mode == "partial" else None
        network.preprocessing = self.preprocessing
        n_parameters = sum(p.numel() for p in network.parameters())
        logger.info(
            "%s with %d classes, %d parameters",
            config.architecture,
            network.num_classes,
            n_parameters,
        )
        return network.to(self.device)

    def _plan_topology(self, features: list[int] | None) -> dict[str, Any]:
        """Choose strides and kernels for the patch size and spacing, as nnU-Net does."""
        options: dict[str, Any] = {"base_features": 16, "max_features": 320}
        if features:
            options = {"base_features": features[0], "max_stages": len(features)}
        topology = plan_topology(self.config.patch_size, self.preprocessing.spacing, **options)
        if tuple(topology.patch_size) != self.preprocessing.patch_size:
            logger.info(
                "patch size %s rounded up to %s to fit the network's strides",
                self.preprocessing.patch_size,
                tuple(topology.patch_size),
            )
            self.preprocessing.patch_size = tuple(int(p) for p in topology.patch_size)
        model_args = topology.model_args()
        if features:
            model_args["features_per_stage"] = list(features[: len(topology.strides)])
        return model_args

    def _build_loader(self, cases: list[LoadedCase]) -> DataLoader:
        config = self.config
        transform = Augmentation(seed=config.seed) if config.augment else None
        patches = PatchDataset(
            cases,
            patch_size=self.preprocessing.patch_size,
            foreground_fraction=config.foreground_fraction,
            pad_value=float(self.preprocessing.normalize(np.array(self.preprocessing.ct_clip[0]))),
            transform=transform,
            seed=config.seed,
        )
        self.sampler = DatasetBalancedSampler(
            [case.dataset for case in cases],
            alpha=config.alpha,
            num_samples=config.iterations_per_epoch * config.batch_size,
            seed=config.seed,
        )
        return DataLoader(
            patches,
            batch_size=config.batch_size,
            sampler=self.sampler,
            collate_fn=collate_patches,
            num_workers=config.num_workers,
            drop_last=True,
        )

    def fit(self) -> SegmentationNetwork:
        """Run every epoch, write the model after each, and return the trained network."""
        if not hasattr(self, "network"):
            self.setup()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.output_dir / "training_config.json", self.config.to_dict())
        start = time.perf_counter()
        for epoch in range(self.config.epochs):
            record = self.train_epoch(epoch)
            self.history.append(record)
            logger.info(
                "epoch %d/%d: loss %.4f, lr %.2e, %.1f s",
                epoch + 1,
                self.config.epochs,
                record["loss"],
                record["lr"],
                record["seconds"],
            )
            self.save()
        logger.info("training finished in %.1f s", time.perf_counter() - start)
        return self.network

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch and return its log record (epoch, loss, lr, seconds)."""
        lr = poly_lr(self.config.learning_rate, epoch, self.config.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.sampler.set_epoch(epoch)
        self.network.train()
        start = time.perf_counter()
        losses = []
        batches = tqdm(
            self.loader,
            desc=f"epoch {epoch + 1}",
            unit="it",
            leave=False,
            disable=not self.config.progress,
        )
        for batch in batches:
            losses.append(self.train_step(batch))
            batches.set_postfix(loss=f"{losses[-1]:.3f}")
        mean_loss = float(np.mean(losses))
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"training loss became {mean_loss} in epoch {epoch + 1}; lower the learning "
                "rate or check the input intensities"
            )
        return {
            "epoch": epoch + 1,
            "loss": mean_loss,
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }

    def train_step(self, batch: dict[str, Any]) -> float:
        """Run one optimizer step on a batch and return the loss value."""
        image = batch["image"].to(self.device)
        targets, annotated = self.targets(batch["label"], batch["dataset"])
        targets = targets.to(self.device)
        annotated = annotated.to(self.device)

        with _autocast(self.device, self.config.mixed_precision):
            outputs = self.network(image)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        level_targets = [_resize_nearest(targets, output.shape[2:]) for output in outputs]
        loss = self.loss(outputs, level_targets, annotated)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def save(self) -> Path:
        """Write the model folder and the training log to ``output_dir``."""
        model_dir = self.network.save_pretrained(self.output_dir / "model")
        _write_json(self.output_dir / "training_log.json", {"epochs": self.history})
        return Path(model_dir)


def _resize_nearest(targets: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if targets.shape[2:] == size:
        return targets
    return F.interpolate(targets.float(), size=tuple(size), mode="nearest").to(targets.dtype)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(temporary, path)
