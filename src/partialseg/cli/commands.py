"""Implementations of the ``partialseg`` subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger("partialseg")


def run_train(args: argparse.Namespace) -> int:
    """Train on nnU-Net raw datasets and write the model folder."""
    from partialseg.training import Trainer, TrainingConfig

    options = {
        "spacing": args.spacing,
        "patch_size": args.patch_size,
        "epochs": args.epochs,
        "iterations_per_epoch": args.iterations,
        "batch_size": args.batch_size,
    }
    config = TrainingConfig(
        datasets=list(args.dataset),
        output_dir=args.output,
        seed=args.seed,
        device=args.device,
        label_mode=args.label_mode,
        augment=not args.no_augment,
        foreground_fraction=args.foreground_fraction,
        progress=not args.no_progress,
        model_args={"features_per_stage": args.features} if args.features else {},
        **{key: value for key, value in options.items() if value is not None},
    )
    start = time.perf_counter()
    Trainer(config).fit()
    logger.info(
        "model written to %s (%.1f min)",
        Path(args.output) / "model",
        (time.perf_counter() - start) / 60,
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict per-class masks for every input volume."""
    from partialseg.hub import from_pretrained
    from partialseg.inference import Predictor, predict_to_folder

    network = from_pretrained(args.model)
    predictor = Predictor(
        network,
        step_size=args.step_size,
        mirroring=(0, 1, 2) if args.mirroring else None,
        device=_device(args.device),
        progress=not args.no_progress,
    )
    written = predict_to_folder(predictor, args.input, args.output, classes=args.classes)
    logger.info("wrote predictions of %d case(s) to %s", len(written), args.output)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Score predicted masks against reference label maps and print the table."""
    from partialseg.evaluation import evaluate_folder
    from partialseg.metrics import format_table

    summary = evaluate_folder(args.predictions, args.references, args.labels)
    print(format_table(summary))
    if args.output:
        Path(args.output).write_text(json.dumps(_without_nan(summary), indent=2))
        logger.info("summary written to %s", args.output)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Train on a synthetic partially labeled collection and print Dice on a held-out case."""
    from partialseg.demo import run_demo as demo

    summary = demo(
        args.output,
        epochs=args.epochs,
        iterations_per_epoch=args.iterations,
        seed=args.seed,
        progress=not args.no_progress,
    )
    from partialseg.metrics import format_table

    print(format_table(summary))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Convert a legacy MultiTalent checkpoint into a partialseg model folder."""
    from partialseg.convert import convert_legacy_checkpoint

    if not args.allow_pickle:
        raise ValueError(
            f"{args.source} is an nnU-Net v1 checkpoint stored as a pickle, and loading a pickle "
            "can run arbitrary code; pass --allow-pickle if the file comes from a trusted "
            "source such as the published Zenodo record"
        )
    output = convert_legacy_checkpoint(args.source, args.output, allow_pickle=True)
    logger.info("converted model written to %s", output)
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print a model's architecture, size, preprocessing and classes."""
    from partialseg.hub import from_pretrained

    network = from_pretrained(args.model)
    n_parameters = sum(p.numel() for p in network.parameters())
    print(f"architecture: {network.architecture} ({n_parameters:,} parameters)")
    if network.preprocessing is not None:
        for key, value in network.preprocessing.to_dict().items():
            print(f"{key}: {value}")
    print(f"classes ({network.num_classes}):")
    for channel, name in enumerate(network.class_names):
        print(f"  {channel:3d}  {name}")
    return 0


def _without_nan(value: object) -> object:
    """Replace NaN by None (JSON null) so the output is strict JSON."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
