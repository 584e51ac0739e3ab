"""Typed access to ``collection.json``: the 13 MultiTalent datasets, their classes and layouts.

Each class is a set of the original label values of its dataset, so nesting is
expressed by set inclusion: ``03_liver`` covers values 1 and 2 (liver with
tumour) and ``03_cancer`` covers value 2. The 47 classes of the 13 datasets are
listed in the output-channel order of the published MultiTalent model (Ulrich
et al., MICCAI 2023).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DESCRIPTION_PATH = Path(__file__).with_name("collection.json")
LAYOUTS = ("msd", "pattern", "amos", "images/labels")


@dataclasses.dataclass(frozen=True)
class ClassSpec:
    """One output class of a dataset.

    Attributes:
        name: Class name, unique in the collection (``"03_liver"``).
        organ: Structure name shared by the classes of different datasets that
            annotate the same structure; the naive merge joins classes by it.
        label_values: Original label values of the dataset that the class covers.
        lesion: Whether the class is a tumour, nodule or other lesion.
        channel: Output channel in the published model, or None for classes
            outside the 47 (datasets to fine-tune on).
        nested_in: Name of the class whose label values contain this class's values.
    """

    name: str
    organ: str
    label_values: tuple[int, ...]
    lesion: bool
    channel: int | None
    nested_in: str | None = None


@dataclasses.dataclass(frozen=True)
class DownloadLayout:
    """Location of a dataset's images and label maps in its public download.

    Attributes:
        layout: ``"msd"``, ``"pattern"``, ``"amos"`` or None when no layout is
            stated, in which case the dataset needs ``--layout images/labels``.
        folder: Usual name of the extracted download folder.
        image: Image path pattern relative to the download folder, ``{case}``
            standing for the case id (``"pattern"`` layout only). A pattern that
            names a folder means a DICOM series.
        label: Label map path pattern, as ``image``.
        verified: False when the pattern was not checked against the archive.
        note: What a user must know or check before converting.
    """

    layout: str | None
    folder: str | None = None
    image: str | None = None
    label: str | None = None
    verified: bool = True
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the collection.

    Attributes:
        id: Dataset id of the published model (``"Task003_Liver"``), used as the
            folder name of the converted dataset, so that models trained on the
            converted folders get the published class names
            (``"Task003_Liver/03_liver"``).
        number: Dataset number.
        title: Short human-readable name.
        source: Where the data is published.
        body_region: ``"abdomen"``, ``"thorax"`` or ``"pelvis"``.
        published_training_cases: Number of labelled training cases in the public
            release, or None where it is not stated here.
        case_name: Template of the converted case names, ``{case}`` being the
            case id found in the download.
        source_labels: Original label value to its name.
        classes: The dataset's classes in output-channel order.
        download: The layout of the public download.
    """

    id: str
    number: int
    title: str
    source: str
    body_region: str
    published_training_cases: int | None
    case_name: str
    source_labels: dict[int, str]
    classes: tuple[ClassSpec, ...]
    download: DownloadLayout

    @property
    def class_names(self) -> list[str]:
        """Class names in channel order."""
        return [spec.name for spec in self.classes]

    @property
    def label_values(self) -> tuple[int, ...]:
        """Every label value that may occur in the dataset's label maps, 0 included."""
        return tuple(sorted({0, *(int(v) for v in self.source_labels)}))

    def get_class(self, name: str) -> ClassSpec:
        """Return the class called ``name``.

        Raises:
            KeyError: The dataset has no such class; the message lists its classes.
        """
        for spec in self.classes:
            if spec.name == name:
                return spec
        raise KeyError(f"dataset {self.id} has no class {name!r}; its classes: {self.class_names}")

    def dataset_json(self, num_training: int) -> dict[str, Any]:
        """Build the ``dataset.json`` of the converted dataset.

        Classes covering several label values are written as nnU-Net v2 regions
        (lists of values). ``regions_class_order`` is then added because nnU-Net
        v2 requires it for datasets with regions: for each class, the label value
        it owns, which is its smallest value not covered by a class nested in it.

        Args:
            num_training: Number of converted training cases.

        Returns:
            The ``dataset.json`` content.
        """
        labels: dict[str, Any] = {"background": 0}
        for spec in self.classes:
            values = list(spec.label_values)
            labels[spec.name] = values[0] if len(values) == 1 else values
        content: dict[str, Any] = {
            "name": self.id,
            "description": f"{self.title}; {self.source}",
            "channel_names": {"0": "CT"},
            "labels": labels,
            "numTraining": num_training,
            "file_ending": ".nii.gz",
        }
        if any(len(spec.label_values) > 1 for spec in self.classes):
            content["regions_class_order"] = [self._own_value(spec) for spec in self.classes]
        return content

    def _own_value(self, spec: ClassSpec) -> int:
        nested = {v for c in self.classes if c.nested_in == spec.name for v in c.label_values}
        own = sorted(set(spec.label_values) - nested)
        return own[0] if own else min(spec.label_values)


@dataclasses.dataclass(frozen=True)
class Collection:
    """The 13 datasets of MultiTalent and the extra datasets to fine-tune on.

    Attributes:
        datasets: The 13 training datasets in channel order.
        extra_datasets: Further datasets the converter supports (AMOS 2022).
    """

    datasets: tuple[DatasetSpec, ...]
    extra_datasets: tuple[DatasetSpec, ...] = ()

    def __iter__(self) -> Iterator[DatasetSpec]:
        return iter(self.datasets)

    @property
    def all_datasets(self) -> tuple[DatasetSpec, ...]:
        """The 13 datasets followed by the extra ones."""
        return self.datasets + self.extra_datasets

    def get(self, dataset_id: str) -> DatasetSpec:
        """Return the dataset with id ``dataset_id`` (or its number, such as ``"17"``).

        Raises:
            KeyError: No dataset has that id; the message suggests the closest one.
        """
        for spec in self.all_datasets:
            if dataset_id in (spec.id, str(spec.number)):
                return spec
        ids = [spec.id for spec in self.all_datasets]
        close = difflib.get_close_matches(dataset_id, ids, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown dataset {dataset_id!r}; known datasets: {ids}.{hint}")

    @property
    def class_names(self) -> list[str]:
        """The 47 ``"<dataset>/<class>"`` names of the 13 datasets, in channel order."""
        named = [(c.channel, f"{d.id}/{c.name}") for d in self.datasets for c in d.classes]
        return [name for _, name in sorted(named)]

    def lesion_classes(self) -> list[str]:
        """Return the ``"<dataset>/<class>"`` names of the tumour and lesion classes."""
        return [f"{d.id}/{c.name}" for d in self.all_datasets for c in d.classes if c.lesion]


def load_collection(path: str | Path = DESCRIPTION_PATH) -> Collection:
    """Read and check a collection description.

    Args:
        path: The JSON file; defaults to the ``collection.json`` beside this module.

    Returns:
        The collection.

    Raises:
        ValueError: The description contradicts itself: duplicate names or
            channels, a class value the dataset does not declare, a ``nested_in``
            that is not a superset, or an unknown layout.
    """
    content = json.loads(Path(path).read_text(encoding="utf-8"))
    collection = Collection(
        datasets=tuple(_parse_dataset(entry) for entry in content["datasets"]),
        extra_datasets=tuple(_parse_dataset(entry) for entry in content.get("extra_datasets", [])),
    )
    _check_collection(collection, source=str(path))
    return collection


def _parse_dataset(entry: dict[str, Any]) -> DatasetSpec:
    classes = tuple(
        ClassSpec(
            name=item["name"],
            organ=item["organ"],
            label_values=tuple(item["label_values"]),
            lesion=bool(item["lesion"]),
            channel=item.get("channel"),
            nested_in=item.get("nested_in"),
        )
        for item in entry["classes"]
    )
    return DatasetSpec(
        id=entry["id"],
        number=int(entry["number"]),
        title=entry["title"],
        source=entry["source"],
        body_region=entry["body_region"],
        published_training_cases=entry.get("published_training_cases"),
        case_name=entry.get("case_name", "{case}"),
        source_labels={int(k): v for k, v in entry["source_labels"].items()},
        classes=classes,
        download=DownloadLayout(**entry["download"]),
    )


def _check_collection(collection: Collection, *, source: str) -> None:
    ids = [spec.id for spec in collection.all_datasets]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: dataset ids are not unique: {ids}")
    names = [c.name for spec in collection.all_datasets for c in spec.classes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{source}: class names appear in more than one dataset: {duplicates}")
    channels = sorted(c.channel for spec in collection.datasets for c in spec.classes)
    if channels != list(range(len(channels))):
        raise ValueError(f"{source}: channels of the 13 datasets must be 0..N-1, got {channels}")
    for spec in collection.all_datasets:
        _check_dataset(spec, source=source)


def _check_dataset(spec: DatasetSpec, *, source: str) -> None:
    declared = set(spec.label_values)
    for item in spec.classes:
        missing = sorted(set(item.label_values) - declared)
        if missing or 0 in item.label_values:
            raise ValueError(
                f"{source}: class {item.name!r} of {spec.id} covers values {item.label_values}; "
                f"they must be positive and listed in source_labels {sorted(spec.source_labels)}"
            )
        if item.nested_in is not None:
            parent = spec.get_class(item.nested_in)
            if not set(item.label_values) < set(parent.label_values):
                raise ValueError(
                    f"{source}: {item.name!r} is declared nested in {parent.name!r}, but its "
                    f"values {item.label_values} are not a proper subset of {parent.label_values}"
                )
    if spec.download.layout is not None and spec.download.layout not in LAYOUTS:
        raise ValueError(
            f"{source}: dataset {spec.id} has layout {spec.download.layout!r}; "
            f"expected one of {LAYOUTS} or null"
        )
    if spec.download.layout == "pattern" and not (spec.download.image and spec.download.label):
        raise ValueError(f"{source}: dataset {spec.id} has a pattern layout without patterns")
