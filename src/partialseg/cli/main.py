"""Argument parsing and dispatch of the ``partialseg`` subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from partialseg import __version__
from partialseg.cli import commands
from partialseg.hub.errors import WeightsMismatchError

logger = logging.getLogger("partialseg")


def _triple(kind: type) -> callable:
    def parse(text: str) -> tuple:
        parts = text.replace("x", ",").split(",")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"expected one or three values (z,y,x), got {text!r}")
        try:
            return tuple(kind(p) for p in parts)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {error}") from error

    return parse


def _step_size(text: str) -> float:
    """Parse a window step: a fraction of the patch size in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """Parse an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of at least 1, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spacing", type=_triple(float), help="target spacing z,y,x in mm")
    parser.add_argument("--patch-size", type=_triple(int), help="patch size z,y,x in voxels")
    parser.add_argument("--epochs", type=int, help="number of epochs (default 10)")
    _add_loop_options(parser, default_iterations=50)


def _add_loop_options(parser: argparse.ArgumentParser, *, default_iterations: int) -> None:
    """Add the options that training and fine-tuning share."""
    parser.add_argument(
        "--dataset", action="append", required=True, help="dataset folder (repeat for more)"
    )
    parser.add_argument("-o", "--output", required=True, help="output folder")

    parser.add_argument(
        "--iterations", type=int, help=f"optimizer steps per epoch (default {default_iterations})"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="patches per optimizer step and process; under torchrun the global batch is "
        "this times the number of processes (default 2)",
    )

    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if present)")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="data loader worker processes (default 0)"
    )
    parser.add_argument("--no-augment", action="store_true", help="turn off data augmentation")
    parser.add_argument(
        "--foreground-fraction",
        type=float,
        default=1 / 3,
        help="fraction of patches centred on a labelled voxel (default 1/3)",
    )

    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output folder from its last checkpoint; pass the "
        "options of the original run (--epochs may change)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    finetune = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained model on new datasets (heads, warm-up, then poly decay)",
        description="Fine-tune a pretrained model with the MultiTalent recipe: train only "
        "the heads (AdamW), then warm up the whole network (SGD), then decay the learning "
        "rate. The new data is prepared with the model's spacing, patch size and CT "
        "statistics. Classes whose <dataset>/<class> name exists in the model keep their "
        "heads; the others get new ones.",
    )
    finetune.add_argument(
        "--pretrained", required=True, help="model folder (save_pretrained) or Hub repo id"
    )
    finetune.add_argument(
        "--head-epochs", type=int, default=10, help="epochs training only the heads (default 10)"
    )
    finetune.add_argument(
        "--warmup-epochs",
        type=int,
        default=50,
        help="epochs of linear learning-rate warm-up of the whole network (default 50)",
    )
    finetune.add_argument(
        "--epochs",
        type=int,
        default=1000,
        help="epochs of poly decay after the warm-up (default 1000)",
    )
    finetune.add_argument(
        "--head-lr",
        type=float,
        default=5e-4,
        help="peak learning rate of the heads phase (default 5e-4)",
    )
    finetune.add_argument(
        "--learning-rate",
        type=float,
        default=1e-2,
        help="peak learning rate of the warm-up and start of the decay (default 1e-2)",
    )
    _add_loop_options(finetune, default_iterations=250)
    finetune.set_defaults(handler=commands.run_finetune)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``partialseg`` command."""
    parser = argparse.ArgumentParser(
        prog="partialseg",
        description="Train, fine-tune and run one segmentation network on many partially "
        "labeled CT datasets (MultiTalent).",
    )
    parser.add_argument("--version", action="version", version=f"partialseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="train and evaluate on a synthetic collection (CPU, minutes)"
    )
    demo.add_argument("-o", "--output", default="partialseg_demo", help="output folder")
    demo.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    demo.add_argument("--iterations", type=int, default=25, help="steps per epoch (default 25)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=commands.run_demo)

    train = sub.add_parser("train", help="train on nnU-Net raw datasets")
    _add_training_options(train)
    train.add_argument(
        "--features",
        type=lambda t: [int(v) for v in t.split(",")],
        help="features per stage, e.g. 16,32,64,128 (default: 16 doubling per stage up to 320, "
        "with as many stages as the patch size allows)",
    )
    train.add_argument(
        "--label-mode",
        choices=("partial", "naive"),
        default="partial",
        help="partial: MultiTalent loss; naive: unannotated classes as background",
    )
    train.set_defaults(handler=commands.run_train)
    _add_finetune_parser(sub)

    predict = sub.add_parser("predict", help="predict per-class masks for CT volumes")
    predict.add_argument(
        "-i",
        "--input",
        required=True,
        help="image file, folder of images, DICOM series folder, or imagesTs",
    )
    predict.add_argument("-o", "--output", required=True, help="output folder")
    predict.add_argument("-m", "--model", required=True, help="model folder or Hub repo id")
    predict.add_argument(
        "--classes", nargs="+", help="predict only these classes, named <dataset>/<class>"
    )
    predict.add_argument(
        "--device", default="auto", help="torch device (default: cuda when available, else cpu)"
    )
    predict.add_argument(
        "--step-size",
        type=_step_size,
        default=0.5,
        help="window step as a fraction of the patch size (default 0.5)",
    )
    predict.add_argument(
        "--mirroring",
        nargs="*",
        type=int,
        choices=[0, 1, 2],
        metavar="AXIS",
        help="test-time mirroring along these array axes of the network grid (0 = z, 1 = y, "
        "2 = x); the flag alone mirrors all three",
    )
    predict.add_argument(
        "--precision",
        choices=["bf16", "fp16"],
        help="run the network under autocast in this precision (default: float32)",
    )
    predict.add_argument(
        "--batch-size", type=_positive_int, default=1, help="windows per network call (default 1)"
    )
    predict.add_argument(
        "--accumulate-dtype",
        choices=["float16", "float32"],
        default="float16",
        help="dtype of the sliding-window sums; float32 doubles their memory, and float16 "
        "can change voxels whose probability is within about 1e-3 of 0.5 (default float16)",
    )
    predict.add_argument(
        "--formats",
        nargs="+",
        default=["masks"],
        choices=["masks", "labelmap", "probabilities", "probabilities_npz", "preview"],
        help="outputs to write per case (default: masks)",
    )
    predict.add_argument(
        "--labelmap-classes",
        nargs="+",
        help="classes of the label map, in label order (default: all predicted classes)",
    )
    predict.add_argument(
        "--overlap-policy",
        choices=["error", "first", "last", "largest-prob"],
        default="error",
        help="label map voxels of several classes: error, or the first, last or most "
        "probable class (default: error)",
    )
    predict.add_argument(
        "--postprocess",
        nargs="+",
        choices=["body", "largest_component"],
        help="drop predictions outside the body and/or keep each class's largest component",
    )
    predict.add_argument(
        "--existing",
        choices=["error", "skip", "overwrite"],
        default="error",
        help="what to do with case folders that exist already (default: error)",
    )
    predict.add_argument("--no-progress", action="store_true", help="hide progress bars")
    predict.set_defaults(handler=commands.run_predict)

    evaluate = sub.add_parser("evaluate", help="Dice per class and per dataset")
    evaluate.add_argument("--predictions", required=True, help="output folder of predict")
    evaluate.add_argument(
        "--references", required=True, help="folder of reference label maps <case>.nii.gz"
    )
    evaluate.add_argument(
        "--labels",
        required=True,
        help="JSON mapping reference class names to label values "
        "(a dataset.json works); classes are matched by name",
    )
    evaluate.add_argument("-o", "--output", help="write the summary JSON here")
    evaluate.set_defaults(handler=commands.run_evaluate)

    convert = sub.add_parser("convert", help="convert a published nnU-Net v1 MultiTalent model")
    convert.add_argument("source", help="v1 model folder or model_final_checkpoint.model file")
    convert.add_argument("-o", "--output", required=True, help="partialseg model folder to write")
    convert.add_argument(
        "--allow-pickle",
        action="store_true",
        help="confirm the source is trusted: the legacy files are pickles, "
        "and loading a pickle can run arbitrary code",
    )
    convert.set_defaults(handler=commands.run_convert)

    info = sub.add_parser("info", help="show a model's classes, preprocessing and size")
    info.add_argument("model", help="model folder or Hub repo id")
    info.set_defaults(handler=commands.run_info)
    return parser


def _configure_logging(*, verbose: bool) -> None:
    """Log INFO (DEBUG with -v) on rank 0, and only warnings and errors on other ranks."""
    rank = os.environ.get("RANK", "0")
    level = logging.DEBUG if verbose else logging.INFO
    prefix = ""
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        prefix = f"rank {rank} "
        if rank != "0" and not verbose:
            level = logging.WARNING
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _raise_terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``partialseg`` command and return its exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(verbose=args.verbose)
    if args.command == "predict" and threading.current_thread() is threading.main_thread():
        # SIGTERM would end the process without unwinding and leave the output
        # folder and a staged case behind. Raised as SystemExit, it runs the cleanup.
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError, OSError, WeightsMismatchError) as error:
        logger.debug("command failed", exc_info=True)
        print(f"partialseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"partialseg {args.command}: interrupted", file=sys.stderr)
        return 130
