"""Time a training step and a whole-volume prediction of the published MultiTalent plain U-Net.

The network is ``create_model("multitalent_unet")`` (47 classes, 29.3 M
parameters) with the published patch size 96 x 192 x 192 and CT normalisation.
A training step is forward (bf16 autocast by default), the partial-label loss
over all deep-supervision outputs with every sample from a different dataset,
backward, gradient clipping at 12 and an SGD step. The prediction runs
:class:`partialseg.inference.Predictor` on a synthetic CT at clinical size
(512 x 512 x 300 voxels of 0.8 x 0.8 x 1.5 mm unless ``--volume`` sets
another size), with all 8 mirror combinations as published. The result is one
JSON object on stdout.

Usage:
    python benchmarks/gpu_timing.py                # on a CUDA machine
    python benchmarks/gpu_timing.py --smoke        # tiny sizes on the CPU, checks the code path
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import partialseg
from partialseg.convert import preprocessing_from_plans
from partialseg.inference import Predictor
from partialseg.losses import PartialLabelLoss
from partialseg.nn import create_model
from partialseg.nn.registry import multitalent_plans

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
# Sample b of a batch annotates the channel range DATASET_CHANNELS[b % 4] of the 47
# classes, so the loss gets the partial annotation of a real multi-dataset batch.
DATASET_CHANNELS = [(0, 2), (9, 22), (30, 36), (41, 43)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny patch, batch and volume on the CPU, to check the code path",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda, or cpu with --smoke)"
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="bf16",
        help="autocast dtype of the forward passes",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="training patch in voxels (default 96 192 192; smoke 32 64 64)",
    )
    parser.add_argument("--batch-size", type=int, help="training batch (default 2; smoke 1)")
    parser.add_argument(
        "--volume",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="size of the synthetic CT in voxels (default 512 512 300)",
    )
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; smoke 0)")
    parser.add_argument("--steps", type=int, help="timed training steps (default 10; smoke 1)")
    parser.add_argument(
        "--no-mirroring",
        action="store_true",
        help="predict without test-time mirroring (1 pass instead of 8)",
    )
    return parser.parse_args()


# Defaults of the full run (published sizes) and of the CPU smoke run. The smoke
# patch is the smallest that leaves 2 voxels per axis at the U-Net bottleneck.
FULL = {
    "device": "cuda",
    "patch_size": (96, 192, 192),
    "batch_size": 2,
    "volume": (512, 512, 300),
    "warmup": 3,
    "steps": 10,
}
SMOKE = {
    "device": "cpu",
    "patch_size": (32, 64, 64),
    "batch_size": 1,
    "volume": (40, 40, 20),
    "warmup": 0,
    "steps": 1,
}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the options left unset with the defaults of the full or the smoke run."""
    defaults = SMOKE if args.smoke else FULL
    config: dict[str, Any] = {"smoke": args.smoke, "precision": args.precision}
    for name, default in defaults.items():
        value = getattr(args, name)
        config[name] = default if value is None else value
    config["device"] = torch.device(config["device"])
    config["patch_size"] = tuple(config["patch_size"])
    config["volume"] = tuple(config["volume"])
    config["mirroring"] = None if args.no_mirroring else (0, 1, 2)
    return config


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    function: Callable[[], Any], *, warmup: int, repeats: int, device: torch.device
) -> list[float]:
    """Return the seconds of ``repeats`` calls of ``function`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def training_step_factory(network: torch.nn.Module, config: dict[str, Any]) -> Callable[[], float]:
    """Build a closure that runs one training step on a fixed random batch.

    The targets of every deep-supervision level are built once, outside the
    step, because nnU-Net builds them in its data loader, not in the timed step.
    """
    device, batch = config["device"], config["batch_size"]
    patch = config["patch_size"]
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 1, *patch, generator=generator).to(device)
    targets = torch.rand(batch, network.num_classes, *patch, generator=generator) > 0.9
    with torch.no_grad():
        shapes = [output.shape[2:] for output in _as_list(network(image[:1]))]
    level_targets = [
        F.interpolate(targets.float(), size=shape, mode="nearest").to(device, torch.uint8)
        for shape in shapes
    ]
    annotated = torch.zeros(batch, network.num_classes, dtype=torch.bool)
    for sample in range(batch):
        first, last = DATASET_CHANNELS[sample % len(DATASET_CHANNELS)]
        annotated[sample, first:last] = True
    annotated = annotated.to(device)

    loss_function = PartialLabelLoss()
    optimizer = torch.optim.SGD(
        network.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5
    )
    dtype = PRECISIONS[config["precision"]]

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = _as_list(network(image))
        loss = loss_function(outputs, level_targets, annotated)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        return float(loss.detach())

    return step


def _as_list(outputs: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return outputs if isinstance(outputs, list) else [outputs]


def time_training(config: dict[str, Any]) -> dict[str, Any]:
    """Time training steps of the published plain U-Net on random data."""
    device = config["device"]
    network = create_model("multitalent_unet").to(device).train()
    step = training_step_factory(network, config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_calls(step, warmup=config["warmup"], repeats=config["steps"], device=device)
    median = statistics.median(seconds)
    result = {
        "parameters": sum(p.numel() for p in network.parameters()),
        "patch_size": list(config["patch_size"]),
        "batch_size": config["batch_size"],
        "step_seconds": seconds,
        "median_step_seconds": median,
    }
    if not config["smoke"]:
        # Estimates from the median step, not measured: 250 steps per epoch as published.
        result["estimated_epoch_minutes"] = 250 * median / 60
        result["estimated_2000_epochs_hours"] = 2000 * 250 * median / 3600
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del network, step
    return result


def time_prediction(config: dict[str, Any]) -> dict[str, Any]:
    """Time one whole-volume prediction of a synthetic CT with all 47 classes."""
    device = config["device"]
    network = create_model("multitalent_unet")
    network.preprocessing = preprocessing_from_plans(multitalent_plans("plain"))
    network.preprocessing.patch_size = config["patch_size"]
    precision = None if config["precision"] == "fp32" else config["precision"]
    predictor = Predictor(
        network, device=device, precision=precision, progress=False, mirroring=config["mirroring"]
    )

    size_xyz = config["volume"]
    volume = np.random.default_rng(0).normal(0, 300, size_xyz[::-1]).astype(np.int16)
    spacing_zyx = (1.5, 0.8, 0.8)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    masks = predictor.predict(volume, spacing=spacing_zyx)
    synchronize(device)
    seconds = time.perf_counter() - start

    result = {
        "volume_xyz": list(size_xyz),
        "spacing_zyx_mm": list(spacing_zyx),
        "network_spacing_zyx_mm": list(network.preprocessing.spacing),
        "patch_size": list(network.preprocessing.patch_size),
        "mirror_passes": 2 ** len(config["mirroring"] or ()),
        "classes": len(masks),
        "seconds": seconds,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> int:
    args = parse_args()
    config = settings(args)
    device = config["device"]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; run with --smoke (CPU) or --device cpu")
    report: dict[str, Any] = {
        "smoke": args.smoke,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "partialseg": partialseg.__version__,
        "precision": config["precision"],
        "training": time_training(config),
        "prediction": time_prediction(config),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
