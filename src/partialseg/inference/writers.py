"""Writing predictions to disk: per-class masks, label maps, probabilities and previews.

Layout of one case, ``<output_dir>/<case>/``:

- ``<file name>.nii.gz``: one uint8 mask per class (format ``"masks"``, the
  per-class layout of TotalSegmentator).
- ``classes.json``: maps every file name stem back to its class name.
- ``labelmap.nii.gz`` and ``labelmap.json``: one label map for a set of classes
  and its label table (format ``"labelmap"``).
- ``probabilities/<file name>.nii.gz``: float32 probabilities per class
  (format ``"probabilities"``); NIfTI-1 has no 16-bit float type.
- ``probabilities.npz``: float16 probabilities of all classes with the
  image geometry (format ``"probabilities_npz"``).
- ``preview.png``: a few axial slices with the masks overlaid (format ``"preview"``).

Class names such as ``"D01/liver"`` become file names by
:func:`safe_file_names`. Every case is written to a temporary folder beside
its final place and renamed when complete, so a case folder is never half written.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from partialseg.inference._preview import encode_png, render_preview
from partialseg.inference.inputs import Case, list_cases, load_image
from partialseg.inference.predictor import Predictor
from partialseg.nn.heads import unknown_name_message

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "OVERLAP_POLICIES",
    "build_label_map",
    "predict_to_folder",
    "safe_file_names",
    "write_prediction",
]

FORMATS = ("masks", "labelmap", "probabilities", "probabilities_npz", "preview")
"""Output formats accepted by :func:`predict_to_folder` and :func:`write_prediction`."""

OVERLAP_POLICIES = ("error", "first", "last", "largest-prob")
"""Rules by which :func:`build_label_map` assigns voxels that belong to several classes."""

OverlapPolicy = Literal["error", "first", "last", "largest-prob"]

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


def safe_file_names(class_names: Sequence[str]) -> dict[str, str]:
    """Map class names to unique file name stems.

    The rule: every ``/`` becomes ``__``, every other character outside
    ``A-Z a-z 0-9 . _ -`` becomes ``_``, a leading ``.`` becomes ``_``, and when
    two classes give the same stem, the later ones get ``_2``, ``_3``, ...

    Args:
        class_names: Class names.

    Returns:
        A dict from class name to file name stem, in the order of ``class_names``.

    Example:
        >>> stems = safe_file_names(["D01/liver", "D07/left kidney", "D07/left:kidney"])
        >>> list(stems.values())
        ['D01__liver', 'D07__left_kidney', 'D07__left_kidney_2']
    """
    stems: dict[str, str] = {}
    used: set[str] = set()
    for name in class_names:
        stem = _UNSAFE_CHARACTERS.sub("_", name.replace("/", "__"))
        if stem.startswith("."):
            stem = "_" + stem[1:]
        candidate, counter = stem, 2
        while candidate in used:
            candidate, counter = f"{stem}_{counter}", counter + 1
        used.add(candidate)
        stems[name] = candidate
    return stems


def build_label_map(
    masks: Mapping[str, sitk.Image],
    classes: Sequence[str],
    *,
    overlap_policy: OverlapPolicy = "error",
    probabilities: Mapping[str, np.ndarray] | None = None,
) -> tuple[sitk.Image, dict[str, int]]:
    """Combine binary masks into one label map, class ``i`` of ``classes`` getting value ``i + 1``.

    Args:
        masks: uint8 masks on one grid.
        classes: The classes to include, in label order.
        overlap_policy: What to do where several classes are 1: ``"error"``
            raises, ``"first"`` or ``"last"`` keeps the class that comes first
            or last in ``classes``, ``"largest-prob"`` keeps the class with the
            highest probability.
        probabilities: Probability arrays (z, y, x) per class; required for
            ``"largest-prob"``.

    Returns:
        The label map (uint8, or uint16 above 255 classes) on the masks' grid,
        and the label table from name to value, ``"background"`` being 0.

    Raises:
        ValueError: If classes overlap under ``"error"``, a class is not in
            ``masks``, or the policy is invalid or lacks probabilities.

    Example:
        >>> a = sitk.GetImageFromArray(np.array([[[1, 1, 0]]], np.uint8))
        >>> b = sitk.GetImageFromArray(np.array([[[0, 1, 1]]], np.uint8))
        >>> labels, table = build_label_map({"a": a, "b": b}, ["a", "b"], overlap_policy="last")
        >>> sitk.GetArrayFromImage(labels)[0, 0].tolist(), table
        ([1, 2, 2], {'background': 0, 'a': 1, 'b': 2})
    """
    _check_choice(overlap_policy, OVERLAP_POLICIES, "overlap_policy")
    for name in classes:
        if name not in masks:
            close = difflib.get_close_matches(name, list(masks), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"label map class {name!r} was not predicted{hint}")
    if overlap_policy == "largest-prob" and probabilities is None:
        raise ValueError("overlap_policy='largest-prob' needs the probabilities of the classes")
    if overlap_policy == "error":
        _raise_on_overlap(masks, classes)

    reference = masks[classes[0]]
    dtype = np.uint8 if len(classes) < 256 else np.uint16
    labels = np.zeros(reference.GetSize()[::-1], dtype=dtype)
    best = np.zeros(labels.shape, np.float16) if overlap_policy == "largest-prob" else None
    order = list(enumerate(classes, start=1))
    if overlap_policy == "first":
        order.reverse()
    for value, name in order:
        inside = sitk.GetArrayViewFromImage(masks[name]) > 0
        if best is not None:
            probability = probabilities[name]
            inside &= (labels == 0) | (probability > best)
            best[inside] = probability[inside]
        labels[inside] = value
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    table = {"background": 0, **{name: value for value, name in enumerate(classes, start=1)}}
    return image, table


def _raise_on_overlap(masks: Mapping[str, sitk.Image], classes: Sequence[str]) -> None:
    count = np.zeros(masks[classes[0]].GetSize()[::-1], dtype=np.uint16)
    for name in classes:
        count += sitk.GetArrayViewFromImage(masks[name]) > 0
    overlapping = count > 1
    if not overlapping.any():
        return
    involved = [
        name for name in classes if (sitk.GetArrayViewFromImage(masks[name]) > 0)[overlapping].any()
    ]
    raise ValueError(
        f"classes {involved} overlap in {int(overlapping.sum())} voxels, so one label map "
        "cannot hold them; pass overlap_policy='first', 'last' or 'largest-prob', or a set "
        "of non-overlapping label map classes (on the command line: --overlap-policy or "
        "--labelmap-classes)"
    )


_FORMATS_NEEDING_IMAGE = frozenset({"probabilities", "probabilities_npz", "preview"})


def write_prediction(
    folder: str | os.PathLike[str],
    image: sitk.Image | None,
    masks: Mapping[str, sitk.Image],
    *,
    probabilities: Mapping[str, np.ndarray] | None = None,
    formats: Sequence[str] = ("masks",),
    labelmap_classes: Sequence[str] | None = None,
    overlap_policy: OverlapPolicy = "error",
    preview_slices: int = 3,
) -> None:
    """Write one case's prediction into ``folder``, which must not exist yet.

    Args:
        folder: The case folder to create.
        image: The input CT, for the preview and the geometry of the
            probabilities; None when ``formats`` contains neither.
        masks: uint8 masks per class from :meth:`Predictor.predict`.
        probabilities: float16 probabilities per class; required for the
            probability formats and ``overlap_policy="largest-prob"``.
        formats: Any of :data:`FORMATS`.
        labelmap_classes: Classes in the label map, in label order; None takes
            every class in ``masks``.
        overlap_policy: See :func:`build_label_map`.
        preview_slices: Number of slices in ``preview.png``.

    Raises:
        FileExistsError: If ``folder`` exists.
        ValueError: If a format is unknown or data a format needs are missing.
    """
    formats = _check_formats(formats)
    needing_image = sorted(set(formats) & _FORMATS_NEEDING_IMAGE)
    if image is None and needing_image:
        raise ValueError(f"formats {needing_image} need the input image; pass it as image")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    stems = safe_file_names(list(masks))
    if "masks" in formats:
        _write_mask_files(folder, list(masks), masks.items())
    else:
        _write_json(folder / "classes.json", {stem: name for name, stem in stems.items()})
    if "labelmap" in formats:
        classes = list(masks) if labelmap_classes is None else list(labelmap_classes)
        labels, table = build_label_map(
            masks, classes, overlap_policy=overlap_policy, probabilities=probabilities
        )
        sitk.WriteImage(labels, str(folder / "labelmap.nii.gz"), True)
        _write_json(folder / "labelmap.json", {"labels": table, "overlap_policy": overlap_policy})
    if "probabilities" in formats or "probabilities_npz" in formats:
        if probabilities is None:
            raise ValueError("the probability formats need probabilities; predict with them")
        _write_probabilities(folder, image, probabilities, stems, formats)
    if "preview" in formats:
        rgb = render_preview(image, masks, num_slices=preview_slices)
        (folder / "preview.png").write_bytes(encode_png(rgb))


def _write_mask_files(
    folder: Path, names: Sequence[str], masks: Iterable[tuple[str, sitk.Image]]
) -> None:
    """Write ``classes.json`` and one ``<stem>.nii.gz`` per ``(name, mask)`` pair."""
    stems = safe_file_names(names)
    _write_json(folder / "classes.json", {stem: name for name, stem in stems.items()})
    for name, mask in masks:
        sitk.WriteImage(mask, str(folder / f"{stems[name]}.nii.gz"), True)


def _write_probabilities(
    folder: Path,
    image: sitk.Image,
    probabilities: Mapping[str, np.ndarray],
    stems: Mapping[str, str],
    formats: Sequence[str],
) -> None:
    if "probabilities" in formats:
        (folder / "probabilities").mkdir()
        for name, values in probabilities.items():
            probability = sitk.GetImageFromArray(values.astype(np.float32))
            probability.CopyInformation(image)
            sitk.WriteImage(probability, str(folder / "probabilities" / f"{stems[name]}.nii.gz"))
    if "probabilities_npz" in formats:
        arrays = {stems[name]: values.astype(np.float16) for name, values in probabilities.items()}
        np.savez_compressed(
            folder / "probabilities.npz",
            spacing_xyz=np.array(image.GetSpacing()),
            origin_xyz=np.array(image.GetOrigin()),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            **arrays,
        )


def predict_to_folder(
    predictor: Predictor,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    formats: Sequence[str] = ("masks",),
    labelmap_classes: Sequence[str] | None = None,
    overlap_policy: OverlapPolicy = "error",
    postprocess: str | Sequence[str] | None = None,
    existing: Literal["error", "skip", "overwrite"] = "error",
    preview_slices: int = 3,
) -> list[Path]:
    """Predict every case found in ``inputs`` and write one folder per case.

    Args:
        predictor: The predictor to run.
        inputs: Image files, DICOM series folders, folders of images or an
            nnU-Net ``imagesTs`` folder; see :func:`~partialseg.inference.list_cases`.
        output_dir: Folder that receives ``<case>/`` folders.
        classes: Classes to predict; None predicts every class of the network.
        formats: Any of :data:`FORMATS`; the module docstring lists the files.
        labelmap_classes: Classes in the label map; None takes all predicted classes.
        overlap_policy: See :func:`build_label_map`.
        postprocess: Post-processing steps, see :meth:`Predictor.predict`.
        existing: What to do with a case folder that exists: ``"error"``
            raises, ``"skip"`` keeps it and skips the case, ``"overwrite"``
            replaces it once the new one is complete.
        preview_slices: Number of slices in ``preview.png``.

    Returns:
        The case folders written, in the order of the cases.

    Raises:
        FileNotFoundError: If an input does not exist.
        FileExistsError: If a case folder exists and ``existing="error"``.
        ValueError: If an option is invalid, or an image or label map cannot be
            built. The case being written is removed, and earlier cases are kept.
    """
    formats = _check_formats(formats)
    _check_choice(overlap_policy, OVERLAP_POLICIES, "overlap_policy")
    _check_choice(existing, ("error", "skip", "overwrite"), "existing")
    cases = list_cases(inputs)
    if "labelmap" in formats and labelmap_classes is not None:
        _check_labelmap_classes(labelmap_classes, classes, list(predictor.network.class_names))
    output_dir = Path(output_dir)
    created = not output_dir.exists()
    _make_output_folder(output_dir)
    if existing == "error":
        clashes = [case.name for case in cases if (output_dir / case.name).exists()]
        if clashes:
            raise FileExistsError(
                f"case folders exist in {output_dir}: {clashes[:5]}; pass existing='skip' or "
                "existing='overwrite' (on the command line: --existing skip or overwrite)"
            )

    predict_case = functools.partial(
        _predict_case,
        predictor,
        classes=classes,
        formats=formats,
        labelmap_classes=labelmap_classes,
        overlap_policy=overlap_policy,
        postprocess=postprocess,
        preview_slices=preview_slices,
    )
    try:
        return _predict_cases(
            cases, output_dir, predict_case, existing=existing, progress=predictor.progress
        )
    finally:
        # A folder made here that received no case is removed, so a failed
        # first case leaves the file system as it was.
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()


def _predict_cases(
    cases: Sequence[Case],
    output_dir: Path,
    predict_case: Callable[[Case, Path], None],
    *,
    existing: str,
    progress: bool,
) -> list[Path]:
    """Run ``predict_case(case, target)`` for every case, logging how far a failed run got."""
    written = []
    for number, case in enumerate(
        tqdm(cases, disable=not progress, unit="case", desc="cases"), start=1
    ):
        target = output_dir / case.name
        if target.exists() and existing == "skip":
            logger.info("skipping case %s: %s exists", case.name, target)
            continue
        try:
            predict_case(case, target)
        except Exception:
            if len(cases) > 1:
                logger.error(
                    "case %s (%d of %d) failed; %d case folder(s) were written to %s. After "
                    "fixing it, rerun with existing='skip' (--existing skip) to predict only "
                    "the remaining cases",
                    case.name,
                    number,
                    len(cases),
                    len(written),
                    output_dir,
                )
            raise
        written.append(target)
    return written


def _predict_case(
    predictor: Predictor,
    case: Case,
    target: Path,
    *,
    classes: Sequence[str] | None,
    formats: Sequence[str],
    labelmap_classes: Sequence[str] | None,
    overlap_policy: OverlapPolicy,
    postprocess: str | Sequence[str] | None,
    preview_slices: int,
) -> None:
    """Predict one case and move its finished folder to ``target``."""
    output_dir = target.parent
    needs_probabilities = bool(
        {"probabilities", "probabilities_npz"} & set(formats) or overlap_policy == "largest-prob"
    )
    logger.info("predicting case %s from %s", case.name, case.path)
    if set(formats) == {"masks"}:
        # Mask files need no other class, so each mask is written and dropped
        # in turn instead of holding one uint8 volume per class.
        names = list(predictor.network.class_names) if classes is None else list(classes)
        masks = predictor.iter_masks(case.path, classes=classes, postprocess=postprocess)
        with tempfile.TemporaryDirectory(dir=output_dir, prefix=f".{case.name}.") as temporary:
            staging = Path(temporary) / case.name
            staging.mkdir()
            _write_mask_files(staging, names, masks)
            _move_into_place(staging, target)
        return
    # The predictor reads the file itself, so it can release the voxels
    # during the sliding window. Only the preview and the probability
    # files need the image afterwards, and read it again.
    result = predictor.predict(
        case.path,
        classes=classes,
        return_probabilities=needs_probabilities,
        postprocess=postprocess,
    )
    masks, probabilities = result if needs_probabilities else (result, None)
    image = load_image(case.path) if set(formats) & _FORMATS_NEEDING_IMAGE else None
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=f".{case.name}.") as temporary:
        staging = Path(temporary) / case.name
        write_prediction(
            staging,
            image,
            masks,
            probabilities=probabilities,
            formats=formats,
            labelmap_classes=labelmap_classes,
            overlap_policy=overlap_policy,
            preview_slices=preview_slices,
        )
        _move_into_place(staging, target)


def _check_labelmap_classes(
    labelmap_classes: Sequence[str], classes: Sequence[str] | None, known: list[str]
) -> None:
    """Raise before any prediction if a label map class will not be predicted."""
    predicted = known if classes is None else list(classes)
    for name in labelmap_classes:
        if name in predicted:
            continue
        if name in known:
            raise ValueError(
                f"label map class {name!r} is not among the predicted classes {predicted}; "
                "add it to classes (--classes on the command line)"
            )
        raise ValueError(unknown_name_message("label map class", name, predicted))


def _make_output_folder(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(
            f"output folder {output_dir} is a file; pass the path of a folder (new or existing)"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"cannot create output folder {output_dir}: {error.strerror}; pass a folder path "
            "whose parents are folders you can write to"
        ) from error


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished ``staging`` folder to ``target``, replacing an existing one."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = staging.with_name(staging.name + ".old")
    os.replace(target, old)
    os.replace(staging, target)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


def _check_formats(formats: Sequence[str]) -> list[str]:
    if isinstance(formats, str):
        formats = [formats]
    for name in formats:
        _check_choice(name, FORMATS, "format")
    return list(formats)


def _check_choice(value: str, choices: Sequence[str], argument: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"invalid {argument} {value!r}{hint} (valid: {list(choices)})")


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
