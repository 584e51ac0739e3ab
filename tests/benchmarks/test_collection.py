"""The description of the 13 MultiTalent datasets against the published channel table."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
from benchmarks.multitalent13.collection import load_collection

from partialseg.labels import LabelRegistry


@pytest.fixture(scope="module")
def collection():
    return load_collection()


@pytest.fixture(scope="module")
def channels():
    resource = importlib.resources.files("partialseg") / "resources" / "multitalent_channels.json"
    return json.loads(resource.read_text(encoding="utf-8"))


def test_thirteen_datasets_47_classes(collection):
    assert len(collection.datasets) == 13
    assert len(collection.class_names) == 47


def test_classes_match_published_channels(collection, channels):
    expected = [f"{c['dataset']}/{c['region']}" for c in channels["channels"]]
    assert collection.class_names == expected


def test_label_values_match_published_channels(collection, channels):
    for channel in channels["channels"]:
        spec = collection.get(channel["dataset"]).get_class(channel["region"])
        assert spec.channel == channel["channel"]
        assert list(spec.label_values) == channel["source_label_values_in_original_dataset"]


def test_dataset_order_matches_valid_regions(collection, channels):
    assert [spec.id for spec in collection.datasets] == list(channels["valid_regions"])


def test_nesting(collection):
    nested = {(c.name, c.nested_in) for spec in collection for c in spec.classes if c.nested_in}
    assert nested == {
        ("03_cancer", "03_liver"),
        ("07_pancreas_cancer", "07_pancreas"),
        ("64_kidney_tumor", "64_both_kidneys"),
    }


def test_hepatic_vessel_and_tumour_not_nested(collection):
    spec = collection.get("Task008_HepaticVessel")
    assert spec.get_class("08_vessel").label_values == (1,)
    assert spec.get_class("08_tumor").label_values == (2,)
    assert spec.get_class("08_tumor").nested_in is None


def test_lesion_classes(collection):
    assert collection.lesion_classes() == [
        "Task003_Liver/03_cancer",
        "Task006_Lung/06_lungnodule",
        "Task007_Pancreas/07_pancreas_cancer",
        "Task008_HepaticVessel/08_tumor",
        "Task010_Colon/10_colon_cancer",
        "Task064_KiTS_labelsFixed/64_kidney_tumor",
    ]


def test_regions_class_order_of_nested_dataset(collection):
    content = collection.get("Task003_Liver").dataset_json(num_training=2)
    assert content["labels"] == {"background": 0, "03_liver": [1, 2], "03_cancer": 2}
    assert content["regions_class_order"] == [1, 2]


def test_flat_dataset_has_no_regions(collection):
    content = collection.get("Task017_AbdominalOrganSegmentation").dataset_json(num_training=1)
    assert "regions_class_order" not in content
    assert content["labels"]["17_spleen"] == 1


@pytest.mark.parametrize("dataset_id", [s.id for s in load_collection().all_datasets])
def test_dataset_json_read_by_partialseg(collection, dataset_id):
    spec = collection.get(dataset_id)
    registry = LabelRegistry.from_dataset_json(spec.dataset_json(1), dataset_name=spec.id)
    assert registry.class_names == [f"{spec.id}/{name}" for name in spec.class_names]
    label_map = np.array(spec.label_values)
    targets = registry.encode_targets(label_map, spec.id)
    for row, item in zip(targets.tolist(), spec.classes, strict=True):
        assert row == [int(v in item.label_values) for v in spec.label_values]


def test_naive_merge_organs_shared(collection):
    organs = {}
    for spec in collection:
        for item in spec.classes:
            organs.setdefault(item.organ, []).append(item.name)
    assert organs["liver"] == ["03_liver", "17_liver", "46_liver"]
    assert organs["liver_tumor"] == ["03_cancer", "08_tumor"]
    assert organs["pancreas"] == ["07_pancreas", "17_pancreas", "46_pancreas", "62_pancreas"]


def test_get_by_number_and_suggestion(collection):
    assert collection.get("17").id == "Task017_AbdominalOrganSegmentation"
    with pytest.raises(KeyError, match="Task055_SegTHOR"):
        collection.get("Task055_SegThor")


def test_amos_is_extra(collection):
    amos = collection.get("Task218_AMOS2022")
    assert amos not in collection.datasets
    assert len(amos.classes) == 15
    assert all(c.channel is None for c in amos.classes)


def test_converted_names_select_published_heads(collection, tmp_path):
    from partialseg.hub import from_pretrained
    from partialseg.nn import create_model

    published = create_model(
        "plain_unet",
        classes=collection.class_names,
        features_per_stage=[2, 4],
        strides=[[1, 1, 1], [2, 2, 2]],
    )
    published.save_pretrained(tmp_path / "published")
    spec = collection.get("Task064_KiTS_labelsFixed")
    registry = LabelRegistry.from_dataset_json(spec.dataset_json(1), dataset_name=spec.id)

    tuned = from_pretrained(tmp_path / "published", classes=registry)
    old = published.state_dict()
    new = tuned.state_dict()
    kidney = collection.class_names.index("Task064_KiTS_labelsFixed/64_both_kidneys")
    head_keys = [k for k in new if k.startswith("heads.") and new[k].shape[0] == 2]
    assert head_keys
    for key in head_keys:
        assert new[key][0].tolist() == old[key][kidney].tolist()
