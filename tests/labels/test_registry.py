import json

import numpy as np
import pytest
import torch

from partialseg.labels import LabelRegistry


@pytest.fixture
def registry():
    registry = LabelRegistry()
    registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
    registry.add_dataset("D07", {"liver": [1], "spleen": [2], "kidney": [3, 4]})
    return registry


def test_class_names_keep_datasets_apart(registry):
    assert registry.class_names == [
        "D01/liver",
        "D01/liver_tumor",
        "D07/liver",
        "D07/spleen",
        "D07/kidney",
    ]
    assert registry.dataset_names == ["D01", "D07"]
    assert registry.num_classes == 5


def test_classes_of_returns_full_names(registry):
    assert registry.classes_of("D07") == ["D07/liver", "D07/spleen", "D07/kidney"]


def test_default_label_values(registry):
    assert registry.label_values_of("D01") == (0, 1, 2)
    assert registry.label_values_of("D07") == (0, 1, 2, 3, 4)


def test_explicit_label_values_allow_unused_values():
    registry = LabelRegistry()
    registry.add_dataset("D01", {"liver": [1]}, label_values=[0, 1, 5])
    encoded = registry.encode_targets(np.array([0, 1, 5]), "D01")
    assert encoded.tolist() == [[0, 1, 0]]


def test_label_values_missing_class_value_raises():
    registry = LabelRegistry()
    with pytest.raises(ValueError, match=r"lack the class or ignore value\(s\) \[2\]"):
        registry.add_dataset("D01", {"liver": [1, 2]}, label_values=[0, 1])


def test_annotated_mask(registry):
    mask = registry.annotated_mask(["D07", "D01", "D07"])
    assert mask.dtype == torch.bool
    assert mask.tolist() == [
        [False, False, True, True, True],
        [True, True, False, False, False],
        [False, False, True, True, True],
    ]


def test_annotated_mask_rejects_single_string(registry):
    with pytest.raises(TypeError, match="wrap a single name in a list"):
        registry.annotated_mask("D01")


def test_encode_targets_nested_classes(registry):
    label_map = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    encoded = registry.encode_targets(label_map, "D01")
    assert encoded.dtype == torch.uint8
    assert encoded.shape == (5, 2, 2)
    assert encoded[0].tolist() == [[0, 1], [1, 1]]
    assert encoded[1].tolist() == [[0, 0], [1, 1]]
    assert encoded[2:].sum() == 0


def test_encode_targets_other_dataset(registry):
    label_map = torch.tensor([0, 1, 2, 3, 4])
    encoded = registry.encode_targets(label_map, "D07")
    assert encoded.tolist() == [
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1],
    ]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.int64], ids=str)
def test_encode_targets_accepts_integer_dtypes(registry, dtype):
    label_map = np.array([[[0, 3], [4, 2]]], dtype=dtype)
    encoded = registry.encode_targets(label_map, "D07")
    assert encoded.shape == (5, 1, 2, 2)
    assert encoded[4].tolist() == [[[0, 1], [1, 0]]]


def test_encode_targets_rejects_float(registry):
    with pytest.raises(TypeError, match="integer dtype"):
        registry.encode_targets(np.zeros(3, dtype=np.float32), "D01")


def test_encode_targets_rejects_undeclared_value(registry):
    with pytest.raises(ValueError, match=r"undeclared label value\(s\) \[3\]"):
        registry.encode_targets(np.array([0, 3]), "D01")


def test_encode_targets_rejects_negative_value(registry):
    with pytest.raises(ValueError, match=r"undeclared label value\(s\) \[-1\]"):
        registry.encode_targets(np.array([0, -1]), "D01")


def test_encode_batch_uses_each_dataset(registry):
    label_maps = torch.tensor([[0, 1, 2], [2, 3, 0]])
    encoded = registry.encode_batch(label_maps, ["D01", "D07"])
    assert encoded.shape == (2, 5, 3)
    assert torch.equal(encoded[0], registry.encode_targets(label_maps[0], "D01"))
    assert torch.equal(encoded[1], registry.encode_targets(label_maps[1], "D07"))


def test_encode_batch_length_mismatch(registry):
    with pytest.raises(ValueError, match="one map per dataset name"):
        registry.encode_batch(torch.zeros(2, 3, dtype=torch.long), ["D01"])


def test_validate_label_map_message_names_source(registry):
    with pytest.raises(ValueError, match=r"case_3\.nii\.gz") as error:
        registry.validate_label_map(np.array([0, 7, 9]), "D01", source="case_3.nii.gz")
    message = str(error.value)
    assert "[7, 9]" in message
    assert "declared values are [0, 1, 2]" in message


def test_unknown_dataset_suggests_name(registry):
    with pytest.raises(ValueError, match="Did you mean 'D07'"):
        registry.encode_targets(np.array([0]), "D70")


def test_duplicate_dataset_raises(registry):
    with pytest.raises(ValueError, match="already in the registry"):
        registry.add_dataset("D01", {"liver": [1]})


@pytest.mark.parametrize(
    ("classes", "error"),
    [
        ({}, ValueError),
        ({"liver": []}, ValueError),
        ({"liver": [0, 1]}, ValueError),
        ({"liver": [-1]}, ValueError),
        ({"a/b": [1]}, ValueError),
        ({"liver": [1.5]}, TypeError),
        ({"liver": "1"}, TypeError),
    ],
    ids=["empty", "no-values", "background", "negative", "slash", "float", "string"],
)
def test_invalid_classes_raise(classes, error):
    with pytest.raises(error):
        LabelRegistry().add_dataset("D01", classes)


def test_dict_round_trip_keeps_order(registry):
    restored = LabelRegistry.from_dict(registry.to_dict())
    assert restored == registry
    assert restored.class_names == registry.class_names


def test_save_load_is_stable(registry, tmp_path):
    first = registry.save(tmp_path / "a.json")
    second = LabelRegistry.load(first).save(tmp_path / "b.json")
    assert first.read_text() == second.read_text()
    assert json.loads(first.read_text())["format_version"] == 1


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LabelRegistry.load(tmp_path / "missing.json")


def test_from_dict_rejects_unknown_version(registry):
    data = registry.to_dict()
    data["format_version"] = 99
    with pytest.raises(ValueError, match="format_version 99"):
        LabelRegistry.from_dict(data)


def test_from_dataset_json_file(tmp_path):
    folder = tmp_path / "Dataset003_Liver"
    folder.mkdir()
    content = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": [1, 2], "tumor": 2},
        "regions_class_order": [1, 2],
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(content))
    registry = LabelRegistry.from_dataset_json(folder / "dataset.json")
    assert registry.class_names == ["Dataset003_Liver/liver", "Dataset003_Liver/tumor"]
    assert registry.label_values_of("Dataset003_Liver") == (0, 1, 2)
    assert LabelRegistry.from_dataset_json(folder).class_names == registry.class_names


def test_from_dataset_json_ignore_label():
    content = {"labels": {"background": 0, "spleen": 1, "ignore": 2}}
    registry = LabelRegistry.from_dataset_json(content, dataset_name="D09")
    assert registry.class_names == ["D09/spleen"]
    assert registry.dataset("D09").ignore_value == 2
    assert registry.encode_targets(np.array([0, 1, 2]), "D09").tolist() == [[0, 1, 0]]


def test_from_dataset_json_nnunet_v1_labels():
    content = {"labels": {"0": "background", "1": "liver", "2": "cancer"}}
    registry = LabelRegistry.from_dataset_json(content, dataset_name="Task003_Liver")
    assert registry.class_names == ["Task003_Liver/liver", "Task003_Liver/cancer"]
    assert registry.dataset("Task003_Liver").classes == {"liver": (1,), "cancer": (2,)}


def test_from_dataset_json_rejects_string_values():
    content = {"labels": {"background": 0, "liver": "1"}}
    with pytest.raises(ValueError, match="label 'liver' must be an int or a list of ints"):
        LabelRegistry.from_dataset_json(content, dataset_name="D01")


def test_from_dataset_json_dict_needs_name():
    with pytest.raises(ValueError, match="dataset_name is required"):
        LabelRegistry.from_dataset_json({"labels": {"background": 0, "a": 1}})


def test_from_dataset_json_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset\.json not found"):
        LabelRegistry.from_dataset_json(tmp_path / "nothing" / "dataset.json")
