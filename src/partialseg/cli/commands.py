"""Implementations of the ``partialseg`` subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("partialseg")


def run_train(args: argparse.Namespace) -> int:
    """Train on nnU-Net raw datasets and write the model folder."""
    from partialseg.training import Trainer, TrainingConfig

    options = {
        "spacing": args.spacing,
        "patch_size": args.patch_size,
        "epochs": args.epochs,
    }
    config = TrainingConfig(
        label_mode=args.label_mode,
        model_args={"features_per_stage": args.features} if args.features else {},
        **_loop_options(args),
        **{key: value for key, value in options.items() if value is not None},
    )
    return _fit(Trainer(config), resume=args.resume)


def run_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a pretrained model on new datasets and write the model folder."""
    from partialseg.training import FineTuneConfig, FineTuner

    config = FineTuneConfig(
        pretrained=args.pretrained,
        head_epochs=args.head_epochs,
        warmup_epochs=args.warmup_epochs,
        epochs=args.epochs,
        head_lr=args.head_lr,
        learning_rate=args.learning_rate,
        **_loop_options(args),
    )
    return _fit(FineTuner(config), resume=args.resume)


def _loop_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return the configuration fields that ``train`` and ``finetune`` share."""
    options = {
        "datasets": list(args.dataset),
        "output_dir": args.output,
        "seed": args.seed,
        "device": args.device,
        "augment": not args.no_augment,
        "foreground_fraction": args.foreground_fraction,
        "num_workers": args.num_workers,
        "progress": not args.no_progress,
    }
    if args.iterations is not None:
        options["iterations_per_epoch"] = args.iterations
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    return options


def _fit(trainer: Any, *, resume: bool) -> int:
    start = time.perf_counter()
    trainer.fit(resume=resume)
    if trainer.is_main:
        logger.info(
            "model written to %s (%.1f min)",
            trainer.output_dir / "model",
            (time.perf_counter() - start) / 60,
        )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict per-class masks for every input volume."""
    import torch

    from partialseg.hub import from_pretrained
    from partialseg.inference import Predictor, predict_to_folder

    labelmap_only = {"--labelmap-classes": args.labelmap_classes is not None}
    labelmap_only["--overlap-policy"] = args.overlap_policy != "error"
    ignored = [flag for flag, given in labelmap_only.items() if given]
    if ignored and "labelmap" not in args.formats:
        raise ValueError(
            f"{' and '.join(ignored)} apply to the label map only; add --formats labelmap"
        )
    device = _device(args.device)
    network = from_pretrained(args.model)
    predictor = Predictor(
        network,
        step_size=args.step_size,
        mirroring=_mirror_axes(args.mirroring),
        device=device,
        batch_size=args.batch_size,
        precision=args.precision,
        progress=not args.no_progress,
        accumulate_dtype=getattr(torch, args.accumulate_dtype),
    )
    written = predict_to_folder(
        predictor,
        args.input,
        args.output,
        classes=args.classes,
        formats=args.formats,
        labelmap_classes=args.labelmap_classes,
        overlap_policy=args.overlap_policy,
        postprocess=args.postprocess,
        existing=args.existing,
    )
    logger.info("wrote predictions of %d case(s) to %s", len(written), args.output)
    return 0


def _mirror_axes(axes: list[int] | None) -> tuple[int, ...] | None:
    """Return the mirroring axes of ``--mirroring``: None when absent, all three when empty."""
    if axes is None:
        return None
    return tuple(axes) if axes else (0, 1, 2)


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
    """Resolve ``auto`` and reject devices this machine does not have."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"invalid --device {name!r}; use cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available; use --device cpu")
    return name
