"""MultiTalent (partial-label loss) vs the naive merge on the OpenKBP head-and-neck datasets.

Trains the same plain U-Net twice on the collection's datasets D, E and F: once
with the partial-label loss (each dataset's classes are separate outputs, only
annotated classes count) and once on the naive merge (classes merged by name,
unannotated organs count as background). Both predict the five OpenKBP patients
that are in no training dataset and are scored against their contoured organs.

Usage:
    python benchmarks/openkbp_partial_vs_naive.py --output runs/openkbp

``--evaluate-only`` skips training and scores ``<output>/<arm>/model`` folders
written earlier, for example by ``partialseg train ... --label-mode naive``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

from _data import data_root

from partialseg.evaluation import evaluate_folder
from partialseg.hub import from_pretrained
from partialseg.inference import Predictor, predict_to_folder
from partialseg.training import Trainer, TrainingConfig

logger = logging.getLogger("openkbp")

HELD_OUT = ["pt_20", "pt_21", "pt_55", "pt_78", "pt_160"]
DATASETS = ["DatasetD_OKBPparotid", "DatasetE_OKBPmandible", "DatasetF_OKBPfull"]


def prepare_held_out(data: Path, work: Path) -> tuple[Path, Path, dict[str, list[int]]]:
    """Lay out the held-out CTs and their references the way predict and evaluate read them."""
    images, references = work / "held_out_images", work / "held_out_references"
    images.mkdir(parents=True, exist_ok=True)
    references.mkdir(parents=True, exist_ok=True)
    labels: dict[str, list[int]] = {}
    for patient in HELD_OUT:
        folder = data / "openkbp" / patient
        meta = json.loads((folder / "meta.json").read_text())
        labels = {name: [value] for name, value in meta["oar_label_values"].items()}
        shutil.copyfile(folder / "ct.nii.gz", images / f"{patient}.nii.gz")
        shutil.copyfile(folder / "oar_labels.nii.gz", references / f"{patient}.nii.gz")
        annotated = {"annotated": meta["oars_contoured"]}
        (references / f"{patient}.json").write_text(json.dumps(annotated))
    return images, references, labels


def train_arm(args: argparse.Namespace, data: Path, label_mode: str) -> tuple[Path, float]:
    """Train one arm within the time budget and return its model folder and minutes."""
    iterations = args.iterations
    epochs = args.epochs
    config = TrainingConfig(
        datasets=[str(data / "collection" / name) for name in DATASETS],
        output_dir=str(args.output / label_mode),
        spacing=tuple(args.spacing),
        patch_size=tuple(args.patch_size),
        epochs=epochs,
        iterations_per_epoch=iterations,
        batch_size=2,
        seed=args.seed,
        label_mode=label_mode,
        foreground_fraction=0.5,
        model_args={"features_per_stage": args.features},
        progress=False,
    )
    start = time.perf_counter()
    Trainer(config).fit()
    return args.output / label_mode / "model", (time.perf_counter() - start) / 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/openkbp"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--spacing", type=float, nargs=3, default=[4.0, 6.0, 6.0])
    parser.add_argument("--patch-size", type=int, nargs=3, default=[48, 80, 80])
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=["partial", "naive"])
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="score existing <output>/<arm>/model folders without training",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    data = data_root()
    images, references, labels = prepare_held_out(data, args.output)
    results = {"command": " ".join(sys.argv), "arms": {}}
    for arm in args.arms:
        if args.evaluate_only:
            model_dir = args.output / arm / "model"
            log = json.loads((args.output / arm / "training_log.json").read_text())
            minutes = sum(record["seconds"] for record in log["epochs"]) / 60
        else:
            model_dir, minutes = train_arm(args, data, arm)
        predictor = Predictor(from_pretrained(model_dir), progress=False)
        predictions = args.output / arm / "predictions"
        predict_to_folder(predictor, images, predictions, existing="overwrite")
        summary = evaluate_folder(predictions, references, labels)
        results["arms"][arm] = {"training_minutes": minutes, "summary": summary}
        logger.info(
            "%s: %.1f min, mean Dice %.3f", arm, minutes, summary["overall"]["mean_over_classes"]
        )
        (args.output / "results.json").write_text(json.dumps(results, indent=2, default=_nan))
    return 0


def _nan(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


if __name__ == "__main__":
    raise SystemExit(main())
