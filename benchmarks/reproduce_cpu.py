"""CPU-sized reproduction of the MultiTalent claims on the OpenKBP head-and-neck CT.

Three experiments on the collection's datasets D (4 organs), E (5 organs) and F
(7 organs), scored on the five OpenKBP patients that are in no dataset
(pt_20, pt_21, pt_55, pt_78, pt_160), each against the organs contoured for it:

1. MultiTalent (one network, partial-label loss) against the same network
   trained once per dataset and against the naive merge, which merges classes
   by name and counts unannotated organs as background. Dice per class is
   averaged over classes, over datasets and over the classes below 0.75 Dice
   for the per-dataset models.
2. Fine-tuning a MultiTalent model pretrained on D and E to F, whose Esophagus
   and Larynx are new, with the warm-up schedule (heads, warm-up, poly), against
   training on F from scratch with the same number of iterations.
3. Prediction time of the one multi-dataset model against the ensemble of the
   three per-dataset models.

Budgets in optimizer steps, with the unit U = 150 steps times ``--budget`` (at
least 30): each per-dataset model U, MultiTalent 2U and the naive merge 2U,
because the published runs give the multi-dataset model 2000 epochs and each
per-dataset model 1000. ``--equal-steps`` gives the per-dataset models 2U as
well, which separates the effect of the method from that of the steps. The D+E
pretraining gets 2U and the fine-tuning as many steps as the per-dataset model
of F, split 10 % heads, 20 % warm-up and 70 % poly decay. The defaults: spacing
6 x 8 x 8 mm, patches 32 x 48 x 48, batch 2, a 4-stage U-Net with 8-64
features, half the patches centred on an organ, no augmentation, and
prediction with step 0.5 and no test-time mirroring. On the loaded 2-core
machine a step on this grid took 0.7 s against 1.9 s at 4.5 x 6.5 x 6.5 mm with
48 x 64 x 64 patches, and a model of F needed about 300 steps before any organ
of the held-out patients got a Dice above 0. One torch thread is the
default because on a 2-core machine shared with other jobs a 48 x 64 x 64 step
took 5-8 s with one thread and 12-31 s with two (OpenMP threads wait for each
other when the cores are oversubscribed).

Usage:
    python benchmarks/reproduce_cpu.py --output runs/reproduce --budget 1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch
from _data import data_root
from multitalent13.protocols import format_table, mean_per_class, summarize

from partialseg.evaluation import evaluate_folder
from partialseg.hub import from_pretrained
from partialseg.inference import Predictor
from partialseg.training import FineTuneConfig, FineTuner, Trainer, TrainingConfig
from partialseg.training.checkpoint import latest_checkpoint

logger = logging.getLogger("reproduce")

HELD_OUT = ["pt_20", "pt_21", "pt_55", "pt_78", "pt_160"]
DATASETS = {
    "D": "DatasetD_OKBPparotid",
    "E": "DatasetE_OKBPmandible",
    "F": "DatasetF_OKBPfull",
}
UNIT_STEPS = 150
ITERATIONS_PER_EPOCH = 10
ARM_TITLES = {
    "multitalent": "MultiTalent (one model)",
    "per_dataset": "per-dataset models",
    "naive": "naive merge",
}


# -- data ----------------------------------------------------------------------------------


def prepare_held_out(data: Path, work: Path) -> tuple[dict[str, Path], Path, dict[str, list[int]]]:
    """Copy the held-out CTs and write references with their ``annotated`` lists.

    Returns:
        Case name to image file, the reference folder, and organ name to label values.
    """
    images_dir, references = work / "held_out" / "images", work / "held_out" / "references"
    images_dir.mkdir(parents=True, exist_ok=True)
    references.mkdir(parents=True, exist_ok=True)
    images, labels = {}, {}
    for patient in HELD_OUT:
        folder = data / "openkbp" / patient
        meta = json.loads((folder / "meta.json").read_text())
        labels = {name: [value] for name, value in meta["oar_label_values"].items()}
        images[patient] = images_dir / f"{patient}.nii.gz"
        shutil.copyfile(folder / "ct.nii.gz", images[patient])
        shutil.copyfile(folder / "oar_labels.nii.gz", references / f"{patient}.nii.gz")
        annotated = {"annotated": meta["oars_contoured"]}
        (references / f"{patient}.json").write_text(json.dumps(annotated))
    return images, references, labels


def contoured_counts(data: Path) -> dict[str, int]:
    """Return organ name to the number of held-out patients on which it is contoured."""
    counts: dict[str, int] = {}
    for patient in HELD_OUT:
        meta = json.loads((data / "openkbp" / patient / "meta.json").read_text())
        for organ in meta["oars_contoured"]:
            counts[organ] = counts.get(organ, 0) + 1
    return counts


# -- training ------------------------------------------------------------------------------


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "iterations_per_epoch": ITERATIONS_PER_EPOCH,
        "batch_size": 2,
        "seed": args.seed,
        "foreground_fraction": 0.5,
        "augment": args.augment,
        "device": "cpu",
        "progress": False,
    }


def train_arm(
    name: str, config: TrainingConfig | FineTuneConfig, *, resume: bool
) -> dict[str, Any]:
    """Train one arm, or continue it from its checkpoint with ``resume``.

    Returns:
        Its steps, the minutes spent in its epochs (from the training log, so a
        resumed run reports the epochs of both sessions; loading data is not
        counted) and its model folder.
    """
    output = Path(config.output_dir)
    has_checkpoint = latest_checkpoint(output) is not None if output.is_dir() else False
    if output.exists() and not (resume and has_checkpoint):
        shutil.rmtree(output)
    trainer = FineTuner(config) if isinstance(config, FineTuneConfig) else Trainer(config)
    trainer.fit(resume=resume and has_checkpoint)

    minutes = sum(record["seconds"] for record in trainer.history) / 60
    total_epochs = getattr(config, "total_epochs", config.epochs)
    steps = total_epochs * config.iterations_per_epoch
    logger.info("%s: %d steps in %.1f min", name, steps, minutes)
    return {"steps": steps, "minutes": minutes, "model": str(output / "model")}


def build_arms(args: argparse.Namespace, data: Path) -> dict[str, TrainingConfig | FineTuneConfig]:
    """Build the configuration of every training run, in the order they run."""
    # Three epochs at least, so that the fine-tuning run can have one epoch per phase
    # and still match the steps of training F from scratch.
    unit_epochs = max(3, round(UNIT_STEPS * args.budget / ITERATIONS_PER_EPOCH))
    folders = {key: str(data / "collection" / name) for key, name in DATASETS.items()}
    common = common_options(args)
    network = {
        "spacing": tuple(args.spacing),
        "patch_size": tuple(args.patch_size),
        "model_args": {"features_per_stage": list(args.features)},
    }
    runs = args.output / "runs"

    arms: dict[str, TrainingConfig | FineTuneConfig] = {}
    per_dataset_epochs = 2 * unit_epochs if args.equal_steps else unit_epochs
    suffix = "_equal" if args.equal_steps else ""
    for key, folder in folders.items():
        arms[f"per_dataset/{key}"] = TrainingConfig(
            datasets=[folder],
            output_dir=str(runs / f"per_dataset{suffix}_{key}"),
            epochs=per_dataset_epochs,
            **network,
            **common,
        )

    for arm, mode in (("multitalent", "partial"), ("naive", "naive")):
        arms[arm] = TrainingConfig(
            datasets=list(folders.values()),
            output_dir=str(runs / arm),
            label_mode=mode,
            epochs=2 * unit_epochs,
            **network,
            **common,
        )

    arms["pretrain/DE"] = TrainingConfig(
        datasets=[folders["D"], folders["E"]],
        output_dir=str(runs / "pretrain_DE"),
        epochs=2 * unit_epochs,
        **network,
        **common,
    )

    # Fine-tuning gets the steps of the per-dataset model of F it is compared with.
    # The published phases are 10 + 50 + 1000 epochs. At this budget a 10/20/70 % split
    # is used instead, so the head and warm-up phases get enough steps to matter.
    head_epochs = max(1, round(0.1 * per_dataset_epochs))
    warmup_epochs = max(1, round(0.2 * per_dataset_epochs))
    arms["finetune/F"] = FineTuneConfig(
        pretrained=str(runs / "pretrain_DE" / "model"),
        datasets=[folders["F"]],
        output_dir=str(runs / f"finetune{suffix}_F"),
        head_epochs=head_epochs,
        warmup_epochs=warmup_epochs,
        epochs=max(1, per_dataset_epochs - head_epochs - warmup_epochs),
        **common,
    )
    return arms


# -- prediction ----------------------------------------------------------------------------


def predict_all(
    models: dict[str, Path], images: dict[str, Path], output: Path
) -> dict[str, dict[str, float]]:
    """Predict every held-out case with every model, case by case, timing each call.

    Interleaving the models per case spreads changes of the machine's load over
    all models instead of penalising the one that runs during a busy minute.

    Returns:
        Model name to case name to seconds spent in ``Predictor.predict``.
    """
    predictors = {
        name: Predictor(from_pretrained(folder), progress=False) for name, folder in models.items()
    }
    seconds: dict[str, dict[str, float]] = {name: {} for name in models}
    for case, path in images.items():
        image = sitk.ReadImage(str(path))
        for name, predictor in predictors.items():
            start = time.perf_counter()
            masks = predictor.predict(image)
            seconds[name][case] = time.perf_counter() - start
            case_dir = output / name.replace("/", "_") / case
            case_dir.mkdir(parents=True, exist_ok=True)
            for class_name, mask in masks.items():
                file_name = f"{class_name.replace('/', '__')}.nii.gz"
                sitk.WriteImage(mask, str(case_dir / file_name), True)
    return seconds


def dataset_organs(data: Path) -> dict[str, set[str]]:
    """Return ``"D"``, ``"E"``, ``"F"`` to the organs that dataset annotates."""
    organs = {}
    for key, name in DATASETS.items():
        metadata = json.loads((data / "collection" / name / "dataset.json").read_text())
        organs[key] = set(metadata["labels"]) - {"background"}
    return organs


def score_arm(
    prediction_dirs: list[Path],
    references: Path,
    labels: dict[str, list[int]],
    organs: dict[str, set[str]],
) -> dict[str, float]:
    """Return mean Dice per row key ``"<D|E|F>/<organ>"`` over the held-out cases.

    A class of the naive merge (``"merged/<organ>"``) fills the row of every
    dataset that annotates the organ, because that one output serves them all.
    """
    short = {name: key for key, name in DATASETS.items()}
    per_class: dict[str, float] = {}
    for folder in prediction_dirs:
        result = evaluate_folder(folder, references, labels)
        for full_name, dice in mean_per_class(result["per_case"]).items():
            dataset, organ = full_name.split("/", 1)
            if dataset == "merged":
                for key, annotated in organs.items():
                    if organ in annotated:
                        per_class[f"{key}/{organ}"] = dice
            else:
                per_class[f"{short[dataset]}/{organ}"] = dice
    return per_class


# -- report --------------------------------------------------------------------------------


def comparison_section(
    scores: dict[str, dict[str, float]], counts: dict[str, int]
) -> tuple[str, dict[str, Any]]:
    keys = [k for k in scores["per_dataset"]]
    ordered = {arm: {k: scores[arm].get(k, math.nan) for k in keys} for arm in ARM_TITLES}
    summary = summarize(ordered, baseline="per_dataset")
    table = format_table(ordered, summary, labels=ARM_TITLES)
    organs = ", ".join(f"{organ} {n}" for organ, n in sorted(counts.items()))
    return (
        f"{table}\n\nDice in %, mean over the held-out patients on which the organ is "
        f"contoured ({organs} of 5). `*`: below 75 for the per-dataset models "
        '(the paper\'s "difficult" classes). The OpenKBP organs include no lesion class.'
    ), summary


def finetune_section(scores: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    new = {"F/Esophagus", "F/Larynx"}
    tuned, scratch = scores["finetune"], scores["per_dataset"]
    rows = ["| class of F | fine-tuned from D+E | from scratch |", "|---|---:|---:|"]
    keys = [k for k in scratch if k.startswith("F/")]
    for key in keys:
        mark = " (new)" if key in new else ""
        rows.append(f"| {key}{mark} | {_percent(tuned.get(key))} | {_percent(scratch.get(key))} |")
    means = {}
    for title, subset in (
        ("all 7", keys),
        ("new 2", sorted(new)),
        ("seen 5", [k for k in keys if k not in new]),
    ):
        tuned_mean = _nanmean(tuned.get(k, math.nan) for k in subset)
        scratch_mean = _nanmean(scratch.get(k, math.nan) for k in subset)
        means[title] = {"finetune": tuned_mean, "scratch": scratch_mean}
        rows.append(f"| **mean, {title}** | {_percent(tuned_mean)} | {_percent(scratch_mean)} |")
    return "\n".join(rows), means


def timing_section(seconds: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    multi = sum(seconds["multitalent"].values())
    ensemble = sum(sum(seconds[f"per_dataset/{k}"].values()) for k in DATASETS)
    ratio = ensemble / multi
    rows = [
        "| | seconds for 5 CTs | per CT |",
        "|---|---:|---:|",
        f"| MultiTalent, one model, 16 classes | {multi:.1f} | {multi / 5:.2f} |",
        f"| ensemble of 3 per-dataset models, 16 classes | {ensemble:.1f} | {ensemble / 5:.2f} |",
        f"| **ensemble / one model** | **{ratio:.2f}x** | |",
    ]
    return "\n".join(rows), {"multitalent_s": multi, "ensemble_s": ensemble, "ratio": ratio}


def _nanmean(values: Any) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _strict(value: Any) -> Any:
    """Replace NaN by None, recursively, so the results are valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


# -- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("runs/reproduce"),
        help="work folder for models, predictions and the report",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help=f"scales every training run; 1 gives a unit of {UNIT_STEPS} steps",
    )

    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=[6.0, 8.0, 8.0],
        metavar=("Z", "Y", "X"),
        help="target spacing in mm",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        default=[32, 48, 48],
        metavar=("Z", "Y", "X"),
        help="patch size in voxels",
    )
    parser.add_argument(
        "--features", type=int, nargs="+", default=[8, 16, 32, 64], help="features per U-Net stage"
    )
    parser.add_argument("--augment", action="store_true", help="augment training patches")

    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; more than 1 only helps on an otherwise idle machine",
    )
    parser.add_argument(
        "--equal-steps",
        action="store_true",
        help="give each per-dataset model as many steps as MultiTalent (2U instead of U)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resume", action="store_true", help="continue runs that left a checkpoint in --output"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_before = os.getloadavg()
    data = data_root()
    images, references, labels = prepare_held_out(data, args.output)

    arms = build_arms(args, data)
    training = {name: train_arm(name, config, resume=args.resume) for name, config in arms.items()}
    models = {name: Path(info["model"]) for name, info in training.items()}
    del models["pretrain/DE"]

    predictions = args.output / "predictions"
    if predictions.exists():
        shutil.rmtree(predictions)
    seconds = predict_all(models, images, predictions)
    scores = score_all(predictions, references, labels, dataset_organs(data))

    comparison, summary = comparison_section(scores, contoured_counts(data))
    finetune, finetune_means = finetune_section(scores)
    timing, timing_numbers = timing_section(seconds)
    minutes = (time.perf_counter() - start) / 60
    load_after = os.getloadavg()

    report = "\n\n".join(
        [
            f"Command: `python benchmarks/reproduce_cpu.py {' '.join(sys.argv[1:])}`",
            f"Total wall-clock time {minutes:.1f} min on a machine with {os.cpu_count()} CPUs, "
            f"{args.threads} torch thread(s); load average {load_before[0]:.1f} at the start and "
            f"{load_after[0]:.1f} at the end.",
            "### Training runs\n\n" + _training_table(training),
            "### MultiTalent vs per-dataset models vs naive merge\n\n" + comparison,
            "### Fine-tuning to new classes\n\n" + finetune,
            "### Prediction time\n\n" + timing,
        ]
    )
    (args.output / "report.md").write_text(report + "\n")
    results = {
        "command": sys.argv,
        "minutes": minutes,
        "load_average": [load_before, load_after],
        "training": training,
        "scores": scores,
        "summary": summary,
        "finetune_means": finetune_means,
        "prediction_seconds": seconds,
        "timing": timing_numbers,
    }
    (args.output / "results.json").write_text(json.dumps(_strict(results), indent=2))
    print(report)
    return 0


def score_all(
    predictions: Path,
    references: Path,
    labels: dict[str, list[int]],
    organs: dict[str, set[str]],
) -> dict[str, dict[str, float]]:
    """Score the predictions of every arm; the per-dataset arm pools its three models."""

    def folder(name: str) -> Path:
        return predictions / name.replace("/", "_")

    per_dataset_dirs = [folder(f"per_dataset/{key}") for key in DATASETS]
    return {
        "multitalent": score_arm([folder("multitalent")], references, labels, organs),
        "per_dataset": score_arm(per_dataset_dirs, references, labels, organs),
        "naive": score_arm([folder("naive")], references, labels, organs),
        "finetune": score_arm([folder("finetune/F")], references, labels, organs),
    }


def _training_table(training: dict[str, dict[str, Any]]) -> str:
    rows = ["| run | steps | minutes in epochs | s per step |", "|---|---:|---:|---:|"]
    for name, info in training.items():
        per_step = 60 * info["minutes"] / info["steps"]
        rows.append(f"| {name} | {info['steps']} | {info['minutes']:.1f} | {per_step:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
