"""Finding the (image, label map) pairs of a public download in its published layout.

Supported layouts:

- ``msd``: a Medical Segmentation Decathlon task folder, ``TaskXX_Name/`` with
  ``dataset.json`` whose ``training`` list names ``imagesTr/*.nii.gz`` and
  ``labelsTr/*.nii.gz``.
- ``pattern``: image and label paths given as patterns relative to the download
  folder, ``{case}`` standing for the case id, such as BTCV's
  ``RawData/Training/img/img{case}.nii.gz``. An image pattern that names a folder
  is read as a DICOM series.
- ``amos``: AMOS 2022's ``amos22/`` with ``imagesTr``/``labelsTr`` and
  ``imagesVa``/``labelsVa``; only the CT cases (case numbers up to 500) are used.
- ``images/labels``: any two folders whose files pair up by name.

Files whose name starts with ``._`` are skipped everywhere: they are macOS
resource forks, and the MSD archives contain them beside every image.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
AMOS_MAX_CT_CASE = 500


@dataclasses.dataclass(frozen=True)
class SourceCase:
    """One labelled case of a download.

    Attributes:
        case_id: Case id as found in the download (``"0001"``, ``"liver_0"``).
        image: Image file, or a folder holding a DICOM series.
        label: Label map file on the same grid as the image.
    """

    case_id: str
    image: Path
    label: Path


def is_hidden(path: Path) -> bool:
    """Return True for macOS resource forks (``._name``) and other dot files."""
    return path.name.startswith(".")


def strip_suffix(name: str) -> str:
    """Return a file name without its image suffix (``.nii.gz``, ``.nrrd``, ...)."""
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_msd_cases(folder: Path) -> list[SourceCase]:
    """List the training cases of an MSD task folder.

    The ``training`` list of ``dataset.json`` is used when present; otherwise
    every label map in ``labelsTr`` is paired with the image of the same name.

    Raises:
        FileNotFoundError: The folder, ``labelsTr`` or a listed image is missing.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"MSD task folder not found: {folder}")
    metadata_path = folder / "dataset.json"
    pairs: list[tuple[Path, Path]] = []
    if metadata_path.is_file():
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        for entry in metadata.get("training", []):
            pairs.append((folder / entry["image"], folder / entry["label"]))
    else:
        labels_dir = folder / "labelsTr"
        if not labels_dir.is_dir():
            raise FileNotFoundError(
                f"{folder} has neither dataset.json nor labelsTr/; is it an MSD task folder?"
            )
        for label in sorted(labels_dir.glob("*.nii.gz")):
            pairs.append((folder / "imagesTr" / label.name, label))

    cases = []
    for image, label in pairs:
        if is_hidden(image) or is_hidden(label):
            continue
        _require_file(image, "image")
        _require_file(label, "label map")
        cases.append(SourceCase(strip_suffix(label.name), image, label))
    return cases


def find_pattern_cases(root: Path, image_pattern: str, label_pattern: str) -> list[SourceCase]:
    """List the cases whose label map matches ``label_pattern`` under ``root``.

    Args:
        root: The download folder.
        image_pattern: Image path relative to ``root``, with ``{case}`` for the
            case id; it may name a DICOM series folder.
        label_pattern: Label path relative to ``root``, with ``{case}``.

    Returns:
        The cases sorted by case id.

    Raises:
        FileNotFoundError: ``root`` is missing, no label map matches, or a
            matched case has no image.
        ValueError: ``label_pattern`` does not contain ``{case}``.
    """
    if "{case}" not in label_pattern or "{case}" not in image_pattern:
        raise ValueError(
            f"image and label patterns must contain {{case}}, got {image_pattern!r} and "
            f"{label_pattern!r}"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"download folder not found: {root}")
    matcher = _pattern_regex(label_pattern)
    cases = []
    for label in sorted(root.glob(label_pattern.replace("{case}", "*"))):
        relative = label.relative_to(root).as_posix()
        match = matcher.fullmatch(relative)
        if match is None or any(part.startswith(".") for part in label.relative_to(root).parts):
            continue
        case_id = match.group("case")
        image = root / image_pattern.replace("{case}", case_id)
        if not image.exists():
            raise FileNotFoundError(
                f"label map {label} has no image: expected {image} (pattern {image_pattern!r})"
            )
        cases.append(SourceCase(case_id, image, label))
    if not cases:
        raise FileNotFoundError(
            f"no label map under {root} matches {label_pattern!r}; check the download folder "
            "or pass --label-pattern"
        )
    return cases


def find_amos_cases(root: Path, *, max_ct_case: int = AMOS_MAX_CT_CASE) -> list[SourceCase]:
    """List the labelled CT cases of AMOS 2022 (training and validation splits).

    Raises:
        FileNotFoundError: Neither ``labelsTr`` nor ``labelsVa`` exists under ``root``.
    """
    cases = []
    for split in ("Tr", "Va"):
        labels_dir = root / f"labels{split}"
        if not labels_dir.is_dir():
            continue
        for label in sorted(labels_dir.glob("amos_*.nii.gz")):
            if is_hidden(label):
                continue
            case_id = strip_suffix(label.name)
            if int(case_id.rsplit("_", 1)[1]) > max_ct_case:
                continue
            image = root / f"images{split}" / label.name
            _require_file(image, "image")
            cases.append(SourceCase(case_id, image, label))
    if not cases and not any((root / f"labels{s}").is_dir() for s in ("Tr", "Va")):
        raise FileNotFoundError(f"{root} has no labelsTr/ or labelsVa/; is it the amos22 folder?")
    return cases


def find_folder_pair_cases(images_dir: Path, labels_dir: Path) -> list[SourceCase]:
    """Pair the files of two folders.

    An image pairs with the label map of the same name, after dropping the
    nnU-Net channel suffix ``_0000``. When no names agree, files pair by the last
    run of digits in their names, which pairs ``img0001.nii.gz`` with
    ``label0001.nii.gz``.

    Raises:
        FileNotFoundError: A folder is missing or contains no image files.
        ValueError: A label map has no image, or two files share a digit key.
    """
    images = _image_files(images_dir)
    labels = _image_files(labels_dir)
    by_name = {_drop_channel(strip_suffix(p.name)): p for p in images}
    if any(strip_suffix(p.name) in by_name for p in labels):
        keys_of_images = by_name
        label_keys = {strip_suffix(p.name): p for p in labels}
    else:
        keys_of_images = _by_digits(images, images_dir)
        label_keys = _by_digits(labels, labels_dir)
    cases = []
    for key, label in sorted(label_keys.items()):
        if key not in keys_of_images:
            raise ValueError(
                f"label map {label} has no image in {images_dir} (pairing key {key!r}); "
                "images and label maps must pair by name or by their digits"
            )
        cases.append(SourceCase(key, keys_of_images[key], label))
    return cases


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    files = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not is_hidden(p) and p.name.endswith(IMAGE_SUFFIXES)
    ]
    if not files:
        raise FileNotFoundError(f"{folder} contains no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _drop_channel(stem: str) -> str:
    return stem[: -len("_0000")] if stem.endswith("_0000") else stem


def _by_digits(files: list[Path], folder: Path) -> dict[str, Path]:
    keyed: dict[str, Path] = {}
    for path in files:
        digits = re.findall(r"\d+", strip_suffix(path.name))
        if not digits:
            raise ValueError(f"{path.name} in {folder} has no digits to pair it by")
        key = digits[-1]
        if key in keyed:
            raise ValueError(f"{keyed[key].name} and {path.name} in {folder} share the key {key}")
        keyed[key] = path
    return keyed


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = pattern.split("{case}")
    regex = re.escape(parts[0]) + "(?P<case>[^/]+)"
    for part in parts[1:-1]:
        regex += re.escape(part) + "(?P=case)"
    return re.compile(regex + re.escape(parts[-1]))


def _require_file(path: Path, kind: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{kind} not found: {path}")
