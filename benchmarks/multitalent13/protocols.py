"""The three training protocols of the MultiTalent comparison and the evaluation it reports.

Protocols (Ulrich et al., "MultiTalent: A Multi-Dataset Approach to Medical Image
Segmentation", MICCAI 2023):

- ``multitalent``: one network on all datasets. Every class of every dataset is
  its own sigmoid output, and the loss counts only the classes that a sample's
  dataset annotates (label mode ``"partial"``). Published budget: 2000 epochs.
- ``per_dataset``: the same network and recipe trained once per dataset, on
  that dataset's classes only. Published budget: 1000 epochs per dataset.
- ``naive_merge``: one network on all datasets with classes merged by structure
  (``organ`` in ``collection.json``), every unannotated structure counted as
  background (label mode ``"naive"``). This is the baseline the partial-label
  loss is meant to beat; the paper does not report it on the 13 datasets.

Evaluation, as the paper reports it: Dice per class on held-out cases of each
dataset, from five-fold cross-validation in the paper. The per-class Dice is
averaged over the classes and over the datasets (mean of each dataset's class
means). It is also averaged over the "difficult" classes, those below 0.75 Dice
for the per-dataset baseline, and over the tumour and lesion classes, where the
paper finds the largest gains.

Usage, from the repository root, for one fold:
    python -m benchmarks.multitalent13.protocols prepare data/multitalent13 -o runs/mt13 --fold 0
    python -m benchmarks.multitalent13.protocols train runs/mt13/fold_0 --protocol multitalent
    python -m benchmarks.multitalent13.protocols train runs/mt13/fold_0 --protocol per_dataset
    python -m benchmarks.multitalent13.protocols train runs/mt13/fold_0 --protocol naive_merge
    python -m benchmarks.multitalent13.protocols evaluate runs/mt13/fold_0 --protocol multitalent
    python -m benchmarks.multitalent13.protocols report runs/mt13/fold_0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .collection import Collection, load_collection

logger = logging.getLogger("multitalent13.protocols")

PROTOCOLS = ("multitalent", "per_dataset", "naive_merge")
# Settings of the published plain U-Net (plans of Task100_MultiTalent).
PUBLISHED = {
    "architecture": "multitalent_unet",
    "spacing": (1.5, 1.0, 1.0),
    "patch_size": (96, 192, 192),
    "batch_size": 4,
    "iterations_per_epoch": 250,
    "epochs": {"multitalent": 2000, "per_dataset": 1000, "naive_merge": 2000},
}
DIFFICULT_BELOW = 0.75
FOLDS = 5


# -- training configurations ---------------------------------------------------------------


def build_configs(
    protocol: str,
    dataset_dirs: Sequence[Path],
    output_dir: Path,
    **options: Any,
) -> dict[str, Any]:
    """Build the training configurations of one protocol.

    Args:
        protocol: One of :data:`PROTOCOLS`.
        dataset_dirs: Training dataset folders. For ``naive_merge`` these must
            name classes by structure, as :func:`write_organ_views` writes them.
        output_dir: Parent folder of the runs.
        **options: :class:`~partialseg.training.TrainingConfig` fields applied to
            every run (epochs, spacing, ...).

    Returns:
        Run name to ``TrainingConfig``: ``{"multitalent": ...}``, ``{"naive_merge":
        ...}`` or one run per dataset named after the dataset folder.

    Raises:
        ValueError: Unknown protocol or no datasets.
    """
    from partialseg.training import TrainingConfig

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not dataset_dirs:
        raise ValueError("dataset_dirs is empty; pass at least one dataset folder")
    folders = [str(path) for path in dataset_dirs]
    if protocol == "per_dataset":
        return {
            Path(folder).name: TrainingConfig(
                datasets=[folder], output_dir=str(output_dir / Path(folder).name), **options
            )
            for folder in folders
        }
    label_mode = "partial" if protocol == "multitalent" else "naive"
    config = TrainingConfig(
        datasets=folders, output_dir=str(output_dir), label_mode=label_mode, **options
    )
    return {protocol: config}


def published_options(protocol: str) -> dict[str, Any]:
    """Return the TrainingConfig fields of the published plain U-Net recipe for ``protocol``."""
    return {
        "architecture": PUBLISHED["architecture"],
        "spacing": PUBLISHED["spacing"],
        "patch_size": PUBLISHED["patch_size"],
        "batch_size": PUBLISHED["batch_size"],
        "iterations_per_epoch": PUBLISHED["iterations_per_epoch"],
        "epochs": PUBLISHED["epochs"][protocol],
    }


def write_organ_views(
    dataset_dirs: Sequence[Path],
    output: Path,
    organ_of: Callable[[str, str], str],
) -> list[Path]:
    """Write copies of datasets whose ``dataset.json`` names classes by structure.

    The images and label maps are symbolic links to the originals. Only the
    class names change, so the naive merge joins the classes of different
    datasets that annotate the same structure.

    Args:
        dataset_dirs: Dataset folders in nnU-Net raw layout.
        output: Folder that receives one folder per dataset.
        organ_of: ``organ_of(dataset folder name, class name)`` returns the
            structure name.

    Returns:
        The new dataset folders.

    Raises:
        ValueError: Two classes of one dataset map to the same structure.
    """
    written = []
    for folder in dataset_dirs:
        metadata = json.loads((folder / "dataset.json").read_text())
        labels: dict[str, Any] = {}
        for name, values in metadata["labels"].items():
            key = name if name in ("background", "ignore") else organ_of(folder.name, name)
            if key in labels:
                raise ValueError(f"{folder.name}: classes map to the same structure {key!r}")
            labels[key] = values
        target = output / folder.name
        for sub in ("imagesTr", "labelsTr"):
            (target / sub).mkdir(parents=True, exist_ok=True)
            for path in sorted((folder / sub).glob("*.nii.gz")):
                _link(path, target / sub / path.name)
        (target / "dataset.json").write_text(json.dumps({**metadata, "labels": labels}, indent=2))
        written.append(target)
    return written


def collection_organ_of(collection: Collection) -> Callable[[str, str], str]:
    """Return ``organ_of(dataset id, class name)`` for datasets of ``collection``."""
    organs = {(d.id, c.name): c.organ for d in collection.all_datasets for c in d.classes}

    def organ_of(dataset_id: str, class_name: str) -> str:
        return organs.get((dataset_id, class_name), class_name)

    return organ_of


# -- folds ---------------------------------------------------------------------------------


def split_cases(cases: Sequence[str], *, folds: int = FOLDS, seed: int = 0) -> list[list[str]]:
    """Split case names into ``folds`` disjoint test folds of near-equal size.

    Example:
        >>> [len(f) for f in split_cases([f"c{i}" for i in range(11)], folds=5)]
        [3, 2, 2, 2, 2]
    """
    order = np.random.default_rng(seed).permutation(len(cases))
    shuffled = [sorted(cases)[i] for i in order]
    return [sorted(shuffled[k::folds]) for k in range(folds)]


def prepare_fold(
    collection_dir: Path,
    output: Path,
    *,
    fold: int,
    folds: int = FOLDS,
    seed: int = 0,
    collection: Collection | None = None,
) -> Path:
    """Lay out one cross-validation fold of every converted dataset.

    Writes ``train/<dataset>/`` (training cases), ``train_naive/<dataset>/`` (the
    same with classes named by structure) and ``test/<dataset>/images`` plus
    ``test/<dataset>/references``, all as symbolic links.

    Returns:
        The fold folder ``output / f"fold_{fold}"``.

    Raises:
        FileNotFoundError: ``collection_dir`` contains no converted dataset.
        ValueError: ``fold`` is outside ``0 .. folds - 1``.
    """
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    collection = collection or load_collection()
    datasets = [
        collection_dir / s.id
        for s in collection.all_datasets
        if (collection_dir / s.id / "dataset.json").is_file()
    ]
    if not datasets:
        raise FileNotFoundError(f"{collection_dir} contains no converted dataset folder")
    root = output / f"fold_{fold}"
    for folder in datasets:
        cases = [p.name[: -len(".nii.gz")] for p in sorted((folder / "labelsTr").glob("*.nii.gz"))]
        test = set(split_cases(cases, folds=folds, seed=seed)[fold])
        train = root / "train" / folder.name
        for case in cases:
            image = folder / "imagesTr" / f"{case}_0000.nii.gz"
            label = folder / "labelsTr" / f"{case}.nii.gz"
            if case in test:
                _link(image, root / "test" / folder.name / "images" / image.name)
                _link(label, root / "test" / folder.name / "references" / label.name)
            else:
                _link(image, train / "imagesTr" / image.name)
                _link(label, train / "labelsTr" / label.name)
        metadata = json.loads((folder / "dataset.json").read_text())
        metadata["numTraining"] = len(cases) - len(test)
        (train / "dataset.json").write_text(json.dumps(metadata, indent=2))
    train_dirs = sorted(p for p in (root / "train").iterdir() if p.is_dir())
    write_organ_views(train_dirs, root / "train_naive", collection_organ_of(collection))
    return root


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(os.path.abspath(source))


# -- prediction and scoring ----------------------------------------------------------------


def predict_cases(
    predictor: Any,
    images: Mapping[str, Path],
    output_dir: Path,
    *,
    classes: Sequence[str] | None = None,
) -> dict[str, float]:
    """Predict each image and write one ``<dataset>__<class>.nii.gz`` mask per class.

    Args:
        predictor: A :class:`partialseg.inference.Predictor`.
        images: Case name to image file.
        output_dir: Receives ``<case>/`` folders as ``evaluate_folder`` reads them.
        classes: Classes to predict; None predicts all.

    Returns:
        Case name to the seconds that ``predictor.predict`` took (reading and
        writing files excluded).
    """
    seconds = {}
    for case, path in images.items():
        image = sitk.ReadImage(str(path))
        start = time.perf_counter()
        masks = predictor.predict(image, classes=classes)
        seconds[case] = time.perf_counter() - start
        case_dir = output_dir / case
        case_dir.mkdir(parents=True, exist_ok=True)
        for name, mask in masks.items():
            sitk.WriteImage(mask, str(case_dir / f"{name.replace('/', '__')}.nii.gz"), True)
    return seconds


def mean_per_class(per_case: Mapping[str, Mapping[str, float | None]]) -> dict[str, float]:
    """Average per-case Dice per class, leaving out None and NaN (nothing to score).

    Example:
        >>> mean_per_class({"a": {"A/x": 0.5, "A/y": None}, "b": {"A/x": 1.0}})
        {'A/x': 0.75, 'A/y': nan}
    """
    values: dict[str, list[float]] = {}
    for scores in per_case.values():
        for name, value in scores.items():
            values.setdefault(name, [])
            if value is not None and not math.isnan(value):
                values[name].append(float(value))
    return {name: float(np.mean(v)) if v else math.nan for name, v in values.items()}


# -- summaries -----------------------------------------------------------------------------


def summarize(
    scores: Mapping[str, Mapping[str, float]],
    *,
    baseline: str = "per_dataset",
    difficult_below: float = DIFFICULT_BELOW,
    lesion_classes: Sequence[str] = (),
) -> dict[str, Any]:
    """Average per-class Dice the ways the paper reports it.

    Args:
        scores: Protocol to ``{"<dataset>/<class>": mean Dice}``. Every protocol
            is scored on the same class keys; NaN marks a class without a score.
        baseline: Protocol whose Dice defines the difficult classes.
        difficult_below: Classes under this baseline Dice are "difficult".
        lesion_classes: Class keys of tumours and lesions.

    Returns:
        ``{"difficult_classes": [...], "lesion_classes": [...], "protocols": {name:
        {"mean_over_classes", "mean_over_datasets", "mean_difficult",
        "mean_lesion", "per_dataset": {dataset: mean}}}}``; a mean over no class
        is NaN.

    Example:
        >>> scores = {"per_dataset": {"A/x": 0.9, "A/y": 0.5, "B/z": 0.7},
        ...           "multitalent": {"A/x": 0.9, "A/y": 0.6, "B/z": 0.8}}
        >>> summary = summarize(scores, lesion_classes=["A/y"])
        >>> summary["difficult_classes"]
        ['A/y', 'B/z']
        >>> round(summary["protocols"]["multitalent"]["mean_over_datasets"], 3)
        0.775
    """
    if baseline not in scores:
        raise ValueError(f"baseline {baseline!r} is not among the protocols {sorted(scores)}")
    reference = scores[baseline]
    difficult = sorted(k for k, v in reference.items() if not math.isnan(v) and v < difficult_below)
    lesions = sorted(k for k in lesion_classes if k in reference)
    summary: dict[str, Any] = {
        "difficult_classes": difficult,
        "lesion_classes": lesions,
        "protocols": {},
    }
    for protocol, per_class in scores.items():
        per_dataset: dict[str, list[float]] = {}
        for key, value in per_class.items():
            if not math.isnan(value):
                per_dataset.setdefault(key.split("/", 1)[0], []).append(value)
        dataset_means = {name: float(np.mean(v)) for name, v in per_dataset.items()}
        summary["protocols"][protocol] = {
            "mean_over_classes": _mean(per_class.values()),
            "mean_over_datasets": _mean(dataset_means.values()),
            "mean_difficult": _mean(per_class.get(k, math.nan) for k in difficult),
            "mean_lesion": _mean(per_class.get(k, math.nan) for k in lesions),
            "per_dataset": dataset_means,
        }
    return summary


def _mean(values: Any) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def format_table(
    scores: Mapping[str, Mapping[str, float]],
    summary: Mapping[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Render per-class Dice and the averages of :func:`summarize` as a Markdown table.

    Args:
        scores: Protocol to per-class Dice, as given to :func:`summarize`.
        summary: Output of :func:`summarize`.
        labels: Column title per protocol; defaults to the protocol names.

    Returns:
        The table; difficult classes are marked with ``*``, lesions with ``(L)``.
    """
    protocols = list(scores)
    titles = [(labels or {}).get(p, p) for p in protocols]
    lines = ["| class | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(protocols)]
    keys = list(dict.fromkeys(k for p in protocols for k in scores[p]))
    for key in keys:
        mark = (" *" if key in summary["difficult_classes"] else "") + (
            " (L)" if key in summary["lesion_classes"] else ""
        )
        cells = [_cell(scores[p].get(key, math.nan)) for p in protocols]
        lines.append(f"| {key}{mark} | " + " | ".join(cells) + " |")
    rows = [
        ("mean over classes", "mean_over_classes"),
        ("mean over datasets", "mean_over_datasets"),
        (f"difficult classes ({len(summary['difficult_classes'])})", "mean_difficult"),
        (f"lesion classes ({len(summary['lesion_classes'])})", "mean_lesion"),
    ]
    for title, field in rows:
        cells = [_cell(summary["protocols"][p][field]) for p in protocols]
        lines.append(f"| **{title}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


# -- command line --------------------------------------------------------------------------


def _train(fold_dir: Path, protocol: str, args: argparse.Namespace) -> None:
    from partialseg.training import Trainer

    train_root = fold_dir / ("train_naive" if protocol == "naive_merge" else "train")
    dataset_dirs = sorted(p for p in train_root.iterdir() if p.is_dir())
    options = _training_options(protocol, args)
    configs = build_configs(protocol, dataset_dirs, fold_dir / "models" / protocol, **options)
    for name, config in configs.items():
        logger.info("training %s (%s)", name, protocol)
        Trainer(config).fit(resume=args.resume)


def _training_options(protocol: str, args: argparse.Namespace) -> dict[str, Any]:
    """Return the published options with the command-line overrides applied."""
    options = published_options(protocol)
    overrides = {
        "epochs": args.epochs,
        "iterations_per_epoch": args.iterations,
        "batch_size": args.batch_size,
        "device": args.device,
        "spacing": tuple(args.spacing) if args.spacing else None,
        "patch_size": tuple(args.patch_size) if args.patch_size else None,
    }
    options.update({name: value for name, value in overrides.items() if value is not None})
    if args.features:
        # A smaller plain U-Net whose strides are planned for the patch size.
        options["architecture"] = "plain_unet"
        options["model_args"] = {"features_per_stage": list(args.features)}
    return options


def _evaluate(fold_dir: Path, protocol: str, args: argparse.Namespace) -> Path:
    import torch

    from partialseg.evaluation import evaluate_folder
    from partialseg.hub import from_pretrained
    from partialseg.inference import Predictor

    collection = load_collection()
    models = fold_dir / "models" / protocol
    per_case: dict[str, dict[str, float | None]] = {}
    for test_dir in sorted((fold_dir / "test").iterdir()):
        spec = collection.get(test_dir.name)
        model_dir = models / spec.id if protocol == "per_dataset" else models
        network = from_pretrained(model_dir / "model")
        # No test-time mirroring: training does not mirror either, because
        # mirroring swaps sided classes such as the left and right kidney.
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        predictor = Predictor(network, device=device, progress=False)
        if protocol == "naive_merge":
            wanted = {f"merged/{c.organ}": c.name for c in spec.classes}
            labels = {c.organ: list(c.label_values) for c in spec.classes}
        else:
            wanted = {f"{spec.id}/{c.name}": c.name for c in spec.classes}
            labels = {c.name: list(c.label_values) for c in spec.classes}
        images = {
            p.name[: -len("_0000.nii.gz")]: p for p in sorted((test_dir / "images").iterdir())
        }
        predictions = fold_dir / "predictions" / protocol / spec.id
        predict_cases(predictor, images, predictions, classes=list(wanted))
        result = evaluate_folder(predictions, test_dir / "references", labels)
        for case, scores in result["per_case"].items():
            per_case[f"{spec.id}:{case}"] = {
                f"{spec.id}/{wanted[name]}": value for name, value in scores.items()
            }
    out = fold_dir / "scores" / f"{protocol}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"per_case": per_case}, indent=2))
    return out


def _report(fold_dirs: Sequence[Path]) -> str:
    collection = load_collection()
    scores: dict[str, dict[str, float]] = {}
    for protocol in PROTOCOLS:
        per_case: dict[str, dict[str, float | None]] = {}
        for fold_dir in fold_dirs:
            path = fold_dir / "scores" / f"{protocol}.json"
            if path.is_file():
                per_case.update(
                    {
                        f"{fold_dir.name}:{k}": v
                        for k, v in json.loads(path.read_text())["per_case"].items()
                    }
                )
        if per_case:
            scores[protocol] = mean_per_class(per_case)
    if "per_dataset" not in scores:
        raise FileNotFoundError("no per_dataset scores found; evaluate that protocol first")
    keys = list(dict.fromkeys(k for s in scores.values() for k in s))
    scores = {p: {k: s.get(k, math.nan) for k in keys} for p, s in scores.items()}
    summary = summarize(scores, lesion_classes=collection.lesion_classes())
    return format_table(scores, summary)


def _add_training_overrides(command: argparse.ArgumentParser) -> None:
    command.add_argument("--epochs", type=int, help="epochs (default: the published 2000 or 1000)")
    command.add_argument("--iterations", type=int, help="steps per epoch (default 250)")
    command.add_argument("--batch-size", type=int, help="patches per step (default 4)")
    command.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="target spacing in mm (default 1.5 1 1)",
    )
    command.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="patch size in voxels (default 96 192 192)",
    )
    command.add_argument(
        "--features",
        type=int,
        nargs="+",
        help="train a plain U-Net with these features per stage instead of the published network",
    )
    command.add_argument(
        "--resume", action="store_true", help="continue from the checkpoints of an interrupted run"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="lay out one cross-validation fold")
    prepare.add_argument("collection", type=Path, help="folder of converted datasets")
    prepare.add_argument("-o", "--output", type=Path, required=True)
    prepare.add_argument("--fold", type=int, default=0)
    prepare.add_argument("--folds", type=int, default=FOLDS)
    for name, text in (("train", "train one protocol"), ("evaluate", "predict and score")):
        command = commands.add_parser(name, help=text)
        command.add_argument("fold_dir", type=Path)
        command.add_argument("--protocol", choices=PROTOCOLS, required=True)
        command.add_argument("--device", help="torch device; default: CUDA when available")
        if name == "train":
            _add_training_overrides(command)
    report = commands.add_parser("report", help="tabulate the scores of one or more folds")
    report.add_argument("fold_dirs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.command == "prepare":
        print(prepare_fold(args.collection, args.output, fold=args.fold, folds=args.folds))
    elif args.command == "train":
        _train(args.fold_dir, args.protocol, args)
    elif args.command == "evaluate":
        print(_evaluate(args.fold_dir, args.protocol, args))
    else:
        print(_report(args.fold_dirs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
