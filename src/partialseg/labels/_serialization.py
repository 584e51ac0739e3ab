"""JSON and file-format readers and writers of :class:`LabelRegistry`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from partialseg.labels._dataset import FORMAT_VERSION, DatasetLabels

logger = logging.getLogger(__name__)

RegistryT = TypeVar("RegistryT", bound="SerializationMixin")


class SerializationMixin:
    """Conversion of :class:`LabelRegistry` to and from dicts, JSON and dataset folders."""

    _datasets: dict[str, DatasetLabels]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict that keeps dataset and class order.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> registry.to_dict()["datasets"][0]["classes"]
            [{'name': 'liver', 'values': [1, 2]}]
        """
        datasets = []
        for entry in self._datasets.values():
            item: dict[str, Any] = {
                "name": entry.name,
                "classes": [{"name": c, "values": list(v)} for c, v in entry.classes.items()],
                "label_values": list(entry.label_values),
            }
            if entry.ignore_value is not None:
                item["ignore_value"] = entry.ignore_value
            datasets.append(item)
        return {"format_version": FORMAT_VERSION, "datasets": datasets}

    @classmethod
    def from_dict(cls: type[RegistryT], data: Mapping[str, Any]) -> RegistryT:
        """Build a registry from the output of :meth:`to_dict`.

        Args:
            data: A dict with ``format_version`` and ``datasets``.

        Returns:
            A new registry with the same channel order.

        Raises:
            ValueError: If the format version is unsupported or an entry is invalid.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> LabelRegistry.from_dict(registry.to_dict()) == registry
            True
        """
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported label registry format_version {version!r}; this version of "
                f"partialseg reads format_version {FORMAT_VERSION}"
            )
        registry = cls()
        for item in data.get("datasets", []):
            try:
                name, classes = item["name"], {c["name"]: c["values"] for c in item["classes"]}
            except (KeyError, TypeError) as error:
                raise ValueError(
                    f"invalid dataset entry {item!r} in label registry data: each entry needs "
                    "'name' and 'classes' (a list of {'name': ..., 'values': [...]})"
                ) from error
            registry.add_dataset(
                name,
                classes,
                label_values=item.get("label_values"),
                ignore_value=item.get("ignore_value"),
            )
        return registry

    def save(self, path: str | Path) -> Path:
        """Write the registry as JSON.

        Args:
            path: Output file.

        Returns:
            The path written.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> import tempfile, pathlib
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     path = registry.save(pathlib.Path(folder) / "labels.json")
            ...     LabelRegistry.load(path) == registry
            True
        """
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls: type[RegistryT], path: str | Path) -> RegistryT:
        """Read a registry written by :meth:`save`.

        Args:
            path: JSON file.

        Returns:
            The registry.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If the file is not a valid registry.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> import tempfile, pathlib
            >>> registry = LabelRegistry()
            >>> registry.add_dataset("D01", {"liver": [1, 2]})
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     path = registry.save(pathlib.Path(folder) / "labels.json")
            ...     LabelRegistry.load(path).class_names
            ['D01/liver']
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label registry file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        return cls.from_dict(data)

    @classmethod
    def from_dataset_json(
        cls: type[RegistryT],
        path_or_dict: str | Path | Mapping[str, Any],
        *,
        dataset_name: str | None = None,
    ) -> RegistryT:
        """Build a one-dataset registry from an nnU-Net v2 ``dataset.json``.

        See :func:`partialseg.labels.readers.read_dataset_json` for the rules.

        Example:
            >>> from partialseg.labels import LabelRegistry
            >>> info = {"labels": {"background": 0, "liver": [1, 2], "tumor": 2}}
            >>> LabelRegistry.from_dataset_json(info, dataset_name="D03").class_names
            ['D03/liver', 'D03/tumor']
        """
        from partialseg.labels.readers import read_dataset_json

        name, classes, label_values, ignore_value = read_dataset_json(
            path_or_dict, dataset_name=dataset_name
        )
        registry = cls()
        registry.add_dataset(name, classes, label_values=label_values, ignore_value=ignore_value)
        return registry

    @classmethod
    def from_mask_folder(
        cls: type[RegistryT],
        path: str | Path,
        *,
        dataset_name: str,
        file_ending: str = ".nii.gz",
        validate: bool = False,
    ) -> tuple[RegistryT, dict[str, list[str]]]:
        """Build a one-dataset registry from a folder of per-class mask files.

        The folder is laid out as ``<case>/segmentations/<class><file_ending>``.
        The classes are the union of the mask names over all cases, sorted by
        name. Class i (from 0) gets label value i + 1. These are the values of the
        label map obtained by painting the masks in class order onto a zero
        background. Masks that overlap cannot be combined this way, so give them
        to the loss as binary maps in the dataset's channels
        (:meth:`channel_slice`).

        A class whose file is missing in a case is not annotated in that case, so
        the function also returns every case's annotated classes. Turn them into
        the loss's annotated mask with :meth:`class_mask`.

        Args:
            path: Folder that contains the case folders.
            dataset_name: Name of the dataset.
            file_ending: Extension of the mask files.
            validate: Read every mask with SimpleITK and check that it is binary
                and on the same grid as the other masks of its case.

        Returns:
            The registry and, per case, the full names of its annotated classes in
            channel order.

        Raises:
            FileNotFoundError: If the folder or its case folders are missing.
            ValueError: If ``validate`` finds a non-binary mask or mismatched grids.

        Example:
            >>> import pathlib, tempfile
            >>> from partialseg.labels import LabelRegistry
            >>> with tempfile.TemporaryDirectory() as root:
            ...     for case, classes in {"s01": ["liver", "aorta"], "s02": ["liver"]}.items():
            ...         folder = pathlib.Path(root, case, "segmentations")
            ...         folder.mkdir(parents=True)
            ...         for name in classes:
            ...             _ = (folder / f"{name}.nii.gz").write_bytes(b"")
            ...     registry, case_classes = LabelRegistry.from_mask_folder(root, dataset_name="TS")
            >>> registry.class_names
            ['TS/aorta', 'TS/liver']
            >>> case_classes["s02"]
            ['TS/liver']
            >>> registry.class_mask(case_classes["s02"]).tolist()
            [False, True]
        """
        from partialseg.labels.readers import scan_mask_folder, validate_mask_files

        cases = scan_mask_folder(path, file_ending=file_ending)
        class_names = sorted({name for files in cases.values() for name in files})
        if not class_names:
            raise FileNotFoundError(
                f"no mask files ending in {file_ending!r} found in the case folders of {path}"
            )
        if validate:
            for files in cases.values():
                validate_mask_files(files)

        registry = cls()
        classes = {name: [value] for value, name in enumerate(class_names, start=1)}
        registry.add_dataset(dataset_name, classes)
        case_classes = {
            case: [f"{dataset_name}/{name}" for name in class_names if name in files]
            for case, files in cases.items()
        }
        logger.info(
            "Read %d classes and %d cases of dataset %r from %s",
            len(class_names),
            len(cases),
            dataset_name,
            path,
        )
        return registry, case_classes
