"""Convert the public downloads of the MultiTalent datasets into partialseg dataset folders.

Each dataset becomes ``<output>/<dataset id>/`` in nnU-Net raw layout, with
``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz`` (uint8, the
original label values). Its ``dataset.json`` declares every class as the set of
values it covers, so nested classes such as liver (values 1 and 2) and liver
tumour (value 2) are regions. The folder is named after the published
dataset id, so a model trained on it gets the published class names
(``Task003_Liver/03_liver``). ``<output>/collection.json`` lists the converted
datasets. Every case is checked: image and label map on the same grid, label
values declared by the collection description, integral label values.

Usage (from the repository root):
    python -m benchmarks.multitalent13.convert_downloads list
    python -m benchmarks.multitalent13.convert_downloads convert Task003_Liver \\
        downloads/Task03_Liver -o data/multitalent13
    python -m benchmarks.multitalent13.convert_downloads convert Task046_AbdOrgSegm2 \\
        --layout images/labels --images crops/images --labels crops/labels -o data/multitalent13
    python -m benchmarks.multitalent13.convert_downloads convert-all downloads -o data/multitalent13
    python -m benchmarks.multitalent13.convert_downloads validate data/multitalent13
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from partialseg.data.io import check_same_grid, read_image, write_image
from partialseg.labels import LabelRegistry

from .collection import Collection, DatasetSpec, load_collection
from .layouts import (
    SourceCase,
    find_amos_cases,
    find_folder_pair_cases,
    find_msd_cases,
    find_pattern_cases,
)

logger = logging.getLogger("multitalent13.convert")

SUMMARY_NAME = "collection.json"
# Tolerance (mm and direction cosines) of the grid comparison, as in check_same_grid.
GRID_TOLERANCE = 1e-3


def find_cases(
    spec: DatasetSpec,
    source: Path | None,
    *,
    layout: str | None = None,
    image_pattern: str | None = None,
    label_pattern: str | None = None,
    images: Path | None = None,
    labels: Path | None = None,
) -> list[SourceCase]:
    """List the labelled cases of a download, in the dataset's published layout by default.

    Args:
        spec: The dataset.
        source: The extracted download folder (unused by ``images/labels``).
        layout: Overrides the published layout: ``msd``, ``pattern``, ``amos`` or
            ``images/labels``.
        image_pattern: Overrides the published image pattern (``pattern`` layout).
        label_pattern: Overrides the published label pattern (``pattern`` layout).
        images: Image folder of the ``images/labels`` layout.
        labels: Label folder of the ``images/labels`` layout.

    Returns:
        The cases.

    Raises:
        ValueError: The dataset has no published layout and none was given, or an
            option of the chosen layout is missing.
        FileNotFoundError: The download is not where the layout expects it.
    """
    download = spec.download
    if image_pattern or label_pattern:
        layout = layout or "pattern"
    layout = layout or download.layout
    if layout is None:
        raise ValueError(
            f"no published layout is stated for {spec.id}: {download.note} Convert it with "
            "--layout images/labels --images DIR --labels DIR"
        )
    if layout == "images/labels":
        if images is None or labels is None:
            raise ValueError("--layout images/labels needs --images DIR and --labels DIR")
        return find_folder_pair_cases(images, labels)
    if source is None:
        raise ValueError(f"layout {layout!r} needs the download folder of {spec.id}")
    if layout == "msd":
        return find_msd_cases(source)
    if layout == "amos":
        return find_amos_cases(source)
    if layout == "pattern":
        image_pattern = image_pattern or download.image
        label_pattern = label_pattern or download.label
        if not image_pattern or not label_pattern:
            raise ValueError(
                f"{spec.id} has no published patterns; pass --image-pattern and --label-pattern"
            )
        if not download.verified and image_pattern == download.image:
            logger.warning(
                "the layout of %s was not checked against the archive: %s", spec.id, download.note
            )
        return find_pattern_cases(source, image_pattern, label_pattern)
    raise ValueError(f"unknown layout {layout!r}; use msd, pattern, amos or images/labels")


def convert_case(case: SourceCase, spec: DatasetSpec, output: Path) -> dict[str, Any]:
    """Check one case and write its image and label map into the dataset folder ``output``.

    A ``.nii.gz`` image is copied unchanged; other formats and DICOM series are
    written as ``.nii.gz``. The label map is written as uint8 with its original
    values.

    Returns:
        ``{"case": name, "values": [label values present]}``.

    Raises:
        GeometryMismatchError: Image and label map lie on different grids.
        ValueError: The label map has non-integral values or values the dataset
            does not declare.
    """
    name = spec.case_name.format(case=case.case_id)
    image = read_image(_dicom_folder(case.image) if case.image.is_dir() else case.image)
    label = read_image(case.label)
    check_same_grid(image, label, image_name=str(case.image), label_name=str(case.label))
    values = _check_label_values(sitk.GetArrayViewFromImage(label), spec, source=case.label)

    image_target = output / "imagesTr" / f"{name}_0000.nii.gz"
    if case.image.is_file() and case.image.name.endswith(".nii.gz"):
        image_target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(case.image, image_target)
    else:
        write_image(image, image_target)
    write_image(sitk.Cast(label, sitk.sitkUInt8), output / "labelsTr" / f"{name}.nii.gz")
    return {"case": name, "values": values}


def _check_label_values(array: np.ndarray, spec: DatasetSpec, *, source: Path) -> list[int]:
    values = np.unique(array)
    if not np.array_equal(values, np.round(values)):
        raise ValueError(f"{source} contains non-integral label values {values[:10].tolist()}")
    present = sorted(int(v) for v in values)
    unexpected = sorted(set(present) - set(spec.label_values))
    if unexpected:
        raise ValueError(
            f"{source} contains label values {unexpected} that {spec.id} does not declare "
            f"(declared: {list(spec.label_values)}); is this the right dataset?"
        )
    return present


def _dicom_folder(folder: Path) -> Path:
    """Return the one folder under ``folder`` (itself included) that contains DICOM files."""
    candidates = sorted({path.parent for path in folder.rglob("*.dcm")})
    if not candidates:
        return folder
    if len(candidates) > 1:
        shown = ", ".join(str(c.relative_to(folder)) for c in candidates[:5])
        raise ValueError(
            f"{folder} contains DICOM files in {len(candidates)} folders ({shown}); keep only the "
            "CT series of the case"
        )
    return candidates[0]


def convert_dataset(
    spec: DatasetSpec,
    cases: Sequence[SourceCase],
    output_root: Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert every case of a dataset and write its ``dataset.json``.

    Args:
        spec: The dataset.
        cases: Its cases, from :func:`find_cases`.
        output_root: Collection folder; the dataset goes to ``output_root / spec.id``.
        workers: Processes converting cases in parallel.
        overwrite: Replace an existing dataset folder.
        progress: Show a progress bar.

    Returns:
        The dataset folder.

    Raises:
        FileExistsError: The dataset folder exists and ``overwrite`` is False.
        ValueError: ``cases`` is empty or two cases get the same name.
    """
    if not cases:
        raise ValueError(f"no cases to convert for {spec.id}")
    names = [spec.case_name.format(case=case.case_id) for case in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names of {spec.id} are not unique after formatting: {names[:10]}")
    output = output_root / spec.id
    if output.exists():
        if not overwrite:
            raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
        shutil.rmtree(output)
    (output / "imagesTr").mkdir(parents=True)
    (output / "labelsTr").mkdir(parents=True)

    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Serial() as pool:
        jobs = pool.map(convert_case, cases, [spec] * len(cases), [output] * len(cases))
        results = list(tqdm(jobs, total=len(cases), desc=spec.id, disable=not progress))

    _write_json(output / "dataset.json", spec.dataset_json(len(results)))
    _report_class_presence(spec, results)
    update_summary(output_root, spec, len(results))
    logger.info("wrote %d cases of %s to %s", len(results), spec.id, output)
    return output


class _Serial:
    """A stand-in for an executor that runs ``map`` in this process."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, function: Any, *iterables: Any) -> Any:
        return map(function, *iterables)


def _report_class_presence(spec: DatasetSpec, results: list[dict[str, Any]]) -> None:
    present = {value for result in results for value in result["values"]}
    for item in spec.classes:
        if not present.intersection(item.label_values):
            logger.warning(
                "class %s of %s occurs in none of the %d cases", item.name, spec.id, len(results)
            )


def update_summary(output_root: Path, spec: DatasetSpec, num_cases: int) -> None:
    """Record a converted dataset in ``<output_root>/collection.json``."""
    path = output_root / SUMMARY_NAME
    summary = json.loads(path.read_text()) if path.is_file() else {"datasets": {}}
    summary["datasets"][spec.id] = {
        "title": spec.title,
        "source": spec.source,
        "classes": spec.class_names,
        "lesion_classes": [c.name for c in spec.classes if c.lesion],
        "cases": num_cases,
    }
    summary["datasets"] = dict(sorted(summary["datasets"].items()))
    _write_json(path, summary)


def validate_dataset(folder: Path, spec: DatasetSpec, *, read_labels: bool = True) -> list[str]:
    """Check a converted dataset folder against the collection description.

    Checks that partialseg reads its ``dataset.json`` into the described classes,
    that every image has a label map on the same grid, that label values are
    declared, and compares the case count with the public release.

    Args:
        folder: The converted dataset folder.
        spec: Its description.
        read_labels: Also read every label map; otherwise only file pairs are checked.

    Returns:
        Problems found, each one sentence; a count that differs from the public
        release starts with ``"warning:"``. Empty when the folder is valid.
    """
    problems: list[str] = []
    metadata_path = folder / "dataset.json"
    if not metadata_path.is_file():
        return [f"{metadata_path} is missing"]
    metadata = json.loads(metadata_path.read_text())
    expected = spec.dataset_json(metadata.get("numTraining", 0))
    if metadata.get("labels") != expected["labels"]:
        problems.append(
            f"{metadata_path} labels {metadata.get('labels')} differ from the "
            f"description {expected['labels']}"
        )
    registry = LabelRegistry.from_dataset_json(metadata, dataset_name=folder.name)
    declared = {name.split("/", 1)[1]: values for name, values in _classes(registry).items()}
    described = {c.name: c.label_values for c in spec.classes}
    if declared != described:
        problems.append(f"partialseg reads the classes {declared}, expected {described}")

    images = sorted((folder / "imagesTr").glob("*_0000.nii.gz"))
    for image_path in images:
        case = image_path.name[: -len("_0000.nii.gz")]
        label_path = folder / "labelsTr" / f"{case}.nii.gz"
        if not label_path.is_file():
            problems.append(f"case {case} has no label map {label_path}")
        elif read_labels:
            problems.extend(_validate_case(image_path, label_path, spec))
    if not images:
        problems.append(f"{folder / 'imagesTr'} holds no images")
    if metadata.get("numTraining") != len(images):
        problems.append(
            f"dataset.json says numTraining={metadata.get('numTraining')}, "
            f"imagesTr holds {len(images)} cases"
        )
    published = spec.published_training_cases
    if published is not None and published != len(images):
        problems.append(
            f"warning: {len(images)} cases converted, the public release has "
            f"{published} labelled training cases"
        )
    return problems


def _classes(registry: LabelRegistry) -> dict[str, tuple[int, ...]]:
    dataset = registry.dataset(registry.dataset_names[0])
    return {f"{dataset.name}/{name}": tuple(v) for name, v in dataset.classes.items()}


def _validate_case(image_path: Path, label_path: Path, spec: DatasetSpec) -> list[str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_path))
    reader.ReadImageInformation()
    label = sitk.ReadImage(str(label_path))
    image_grid = (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    label_grid = (label.GetSize(), label.GetSpacing(), label.GetOrigin(), label.GetDirection())
    same = all(
        np.allclose(a, b, rtol=0.0, atol=GRID_TOLERANCE)
        for a, b in zip(image_grid, label_grid, strict=True)
    )
    if not same:
        return [f"{label_path} and {image_path} lie on different grids"]
    try:
        _check_label_values(sitk.GetArrayViewFromImage(label), spec, source=label_path)
    except ValueError as error:
        return [str(error)]
    return []


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


def _print_datasets(collection: Collection) -> None:
    for spec in collection.all_datasets:
        download = spec.download
        if download.layout is None:
            where = "no published layout: use --layout images/labels"
        elif download.layout == "pattern":
            where = f"{download.folder}/ {download.image} + {download.label}"
        else:
            where = f"{download.folder}/ ({download.layout})"
        flag = "" if download.verified else "  [layout not checked against the archive]"
        print(f"{spec.id:44s} {len(spec.classes):2d} classes  {where}{flag}")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the datasets and their download layouts")

    convert = commands.add_parser("convert", help="convert one dataset")
    convert.add_argument("dataset", help="dataset id (Task017_...) or number (17)")
    convert.add_argument("source", type=Path, nargs="?", help="extracted download folder")
    convert.add_argument("-o", "--output", type=Path, required=True, help="collection folder")
    convert.add_argument(
        "--layout",
        choices=["msd", "pattern", "amos", "images/labels"],
        help="override the published layout",
    )
    convert.add_argument("--image-pattern", help="image path under SOURCE with {case}")
    convert.add_argument("--label-pattern", help="label path under SOURCE with {case}")
    convert.add_argument("--images", type=Path, help="image folder (images/labels layout)")
    convert.add_argument("--labels", type=Path, help="label folder (images/labels layout)")
    convert.add_argument("--limit", type=int, help="convert only the first N cases")
    _add_common(convert)

    convert_all = commands.add_parser(
        "convert-all", help="convert every dataset whose usual download folder exists"
    )
    convert_all.add_argument("downloads", type=Path, help="folder holding the extracted downloads")
    convert_all.add_argument("-o", "--output", type=Path, required=True, help="collection folder")
    _add_common(convert_all)

    validate = commands.add_parser("validate", help="check converted datasets")
    validate.add_argument("collection", type=Path, help="collection folder")
    validate.add_argument("--dataset", action="append", help="dataset id; default: all found")
    validate.add_argument(
        "--headers-only",
        action="store_true",
        help="check file pairs and dataset.json without reading label maps",
    )
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--overwrite", action="store_true", help="replace existing folders")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_convert(args: argparse.Namespace, collection: Collection) -> int:
    spec = collection.get(args.dataset)
    cases = find_cases(
        spec,
        args.source,
        layout=args.layout,
        image_pattern=args.image_pattern,
        label_pattern=args.label_pattern,
        images=args.images,
        labels=args.labels,
    )
    if args.limit:
        cases = cases[: args.limit]
    folder = convert_dataset(
        spec,
        cases,
        args.output,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return _report(folder, spec, read_labels=False)


def _run_convert_all(args: argparse.Namespace, collection: Collection) -> int:
    status = 0
    for spec in collection.all_datasets:
        folder = args.downloads / spec.download.folder if spec.download.folder else None
        if spec.download.layout is None or folder is None or not folder.is_dir():
            logger.info("skipping %s: %s not found or no published layout", spec.id, folder)
            continue
        cases = find_cases(spec, folder)
        output = convert_dataset(
            spec,
            cases,
            args.output,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        status |= _report(output, spec, read_labels=False)
    return status


def _run_validate(args: argparse.Namespace, collection: Collection) -> int:
    ids = args.dataset or [
        s.id for s in collection.all_datasets if (args.collection / s.id).is_dir()
    ]
    if not ids:
        print(f"no converted dataset found in {args.collection}", file=sys.stderr)
        return 1
    status = 0
    for dataset_id in ids:
        spec = collection.get(dataset_id)
        status |= _report(args.collection / spec.id, spec, read_labels=not args.headers_only)
    return status


def _report(folder: Path, spec: DatasetSpec, *, read_labels: bool) -> int:
    problems = validate_dataset(folder, spec, read_labels=read_labels)
    errors = [p for p in problems if not p.startswith("warning:")]
    for problem in problems:
        print(f"{spec.id}: {problem}", file=sys.stderr)
    print(f"{spec.id}: {'INVALID' if errors else 'valid'} ({folder})")
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    collection = load_collection()
    if args.command == "list":
        _print_datasets(collection)
        return 0
    runners = {"convert": _run_convert, "convert-all": _run_convert_all, "validate": _run_validate}
    try:
        return runners[args.command](args, collection)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
