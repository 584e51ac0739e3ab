"""Registries built from the real partially labeled collection in nnU-Net layout."""

import json

import pytest
import SimpleITK as sitk

from partialseg.labels import LabelRegistry

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def collection_registry(data_root):
    registry = LabelRegistry()
    for dataset_json in sorted((data_root / "collection").glob("Dataset*/dataset.json")):
        registry = registry.merge(LabelRegistry.from_dataset_json(dataset_json))
    return registry


def test_collection_classes_match_listing(collection_registry, data_root):
    listing = json.loads((data_root / "collection" / "collection.json").read_text())["datasets"]
    assert collection_registry.dataset_names == sorted(listing)
    for name, info in listing.items():
        expected = [f"{name}/{c}" for c in info["classes"]]
        assert collection_registry.classes_of(name) == expected


def test_collection_shared_names(collection_registry):
    shared = collection_registry.shared_class_names()
    assert shared["liver"] == ["DatasetA_TSabdomen/liver", "DatasetB_TSupperabdomen/liver"]
    assert shared["aorta"] == ["DatasetA_TSabdomen/aorta", "DatasetC_TSchestCTA/aorta"]
    assert len(shared["Brainstem"]) == 3
    assert "Esophagus" not in shared


def label_files_of(data_root, name):
    return sorted((data_root / "collection" / name / "labelsTr").glob("*.nii.gz"))


def test_first_label_file_per_dataset_is_declared(collection_registry, data_root):
    for name in collection_registry.dataset_names:
        label_file = label_files_of(data_root, name)[0]
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        collection_registry.validate_label_map(array, name, source=label_file)


@pytest.mark.slow
def test_every_label_file_is_declared(collection_registry, data_root):
    for name in collection_registry.dataset_names:
        for label_file in label_files_of(data_root, name):
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
            collection_registry.validate_label_map(array, name, source=label_file)


def test_collection_encoding_of_one_case(collection_registry, data_root):
    label_file = data_root / "collection" / "DatasetB_TSupperabdomen" / "labelsTr"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(next(label_file.glob("*.nii.gz")))))
    encoded = collection_registry.encode_targets(array, "DatasetB_TSupperabdomen")
    channels = collection_registry.channel_slice("DatasetB_TSupperabdomen")
    assert encoded.shape == (collection_registry.num_classes, *array.shape)
    assert encoded[: channels.start].sum() == 0
    assert encoded[channels.stop :].sum() == 0
    liver = collection_registry.channel_index("DatasetB_TSupperabdomen/liver")
    liver_value = collection_registry.dataset("DatasetB_TSupperabdomen").classes["liver"][0]
    assert int(encoded[liver].sum()) == int((array == liver_value).sum())
