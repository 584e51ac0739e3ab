"""Argument parsing and dispatch of the ``partialseg`` subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from partialseg import __version__
from partialseg.cli import commands

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


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spacing", type=_triple(float), help="target spacing z,y,x in mm")
    parser.add_argument("--patch-size", type=_triple(int), help="patch size z,y,x in voxels")
    parser.add_argument("--epochs", type=int, help="number of epochs")
    parser.add_argument("--iterations", type=int, help="optimizer steps per epoch")
    parser.add_argument("--batch-size", type=int, help="patches per optimizer step")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if present)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


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
    train.add_argument("--dataset", action="append", required=True, help="dataset folder (repeat)")
    train.add_argument("-o", "--output", required=True, help="output folder")
    _add_training_options(train)
    train.add_argument(
        "--features",
        type=lambda t: [int(v) for v in t.split(",")],
        help="features per stage, e.g. 16,32,64,128 (default 16,32,64,128,256)",
    )
    train.add_argument(
        "--label-mode",
        choices=("partial", "naive"),
        default="partial",
        help="partial: MultiTalent loss; naive: unannotated classes as background",
    )
    train.add_argument("--no-augment", action="store_true", help="turn off data augmentation")
    train.add_argument(
        "--foreground-fraction",
        type=float,
        default=1 / 3,
        help="fraction of patches centred on a labelled voxel (default 1/3)",
    )
    train.set_defaults(handler=commands.run_train)

    predict = sub.add_parser("predict", help="predict per-class masks for CT volumes")
    predict.add_argument(
        "-i",
        "--input",
        required=True,
        help="image file, folder of images, DICOM series folder, or imagesTs",
    )
    predict.add_argument("-o", "--output", required=True, help="output folder")
    predict.add_argument("-m", "--model", required=True, help="model folder or Hub repo id")
    predict.add_argument("--classes", nargs="+", help="predict only these classes")
    predict.add_argument("--device", default="auto", help="torch device")
    predict.add_argument("--step-size", type=float, default=0.5, help="window step (fraction)")
    predict.add_argument("--mirroring", action="store_true", help="test-time mirroring, all axes")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``partialseg`` command and return its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError, OSError) as error:
        logger.debug("command failed", exc_info=True)
        print(f"partialseg {args.command}: error: {error}", file=sys.stderr)
        return 2
