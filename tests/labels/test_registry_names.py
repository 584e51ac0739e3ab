"""Name lookup, merging and shared-name reports of the label registry."""

import pytest
import torch

from partialseg.labels import LabelRegistry


@pytest.fixture
def registry():
    registry = LabelRegistry()
    registry.add_dataset("D01", {"liver": [1, 2], "liver_tumor": [2]})
    registry.add_dataset("D07", {"liver": [1], "spleen": [2]})
    return registry


def test_resolve_full_name(registry):
    assert registry.resolve("D07/liver") == "D07/liver"


def test_resolve_unambiguous_bare_name(registry):
    assert registry.resolve("spleen") == "D07/spleen"
    assert registry.resolve("liver_tumor") == "D01/liver_tumor"


def test_resolve_ambiguous_bare_name(registry):
    with pytest.raises(ValueError, match=r"ambiguous: it matches \['D01/liver', 'D07/liver'\]"):
        registry.resolve("liver")


def test_resolve_typo_suggests_bare_name(registry):
    with pytest.raises(ValueError, match="Did you mean 'spleen'"):
        registry.resolve("splen")


def test_resolve_typo_in_class_of_dataset(registry):
    with pytest.raises(ValueError, match="Did you mean 'liver_tumor'"):
        registry.resolve("D01/liver_tumour")


def test_resolve_typo_in_dataset(registry):
    with pytest.raises(ValueError, match="Did you mean 'D07'"):
        registry.resolve("D7/liver")


def test_channel_index(registry):
    assert registry.channel_index("D07/liver") == 2
    assert registry.channel_index("spleen") == 3


def test_channel_slice(registry):
    assert registry.channel_slice("D01") == slice(0, 2)
    assert registry.channel_slice("D07") == slice(2, 4)


def test_class_mask(registry):
    assert registry.class_mask(["D01/liver", "spleen"]).tolist() == [True, False, False, True]
    assert registry.class_mask([]).tolist() == [False] * 4


def test_shared_class_names(registry):
    assert registry.shared_class_names() == {"liver": ["D01/liver", "D07/liver"]}


def test_merge_appends_new_datasets(registry):
    other = LabelRegistry()
    other.add_dataset("D07", {"liver": [1], "spleen": [2]})
    other.add_dataset("D09", {"kidney": [1]})
    merged = registry.merge(other)
    assert merged.class_names == [*registry.class_names, "D09/kidney"]
    assert registry.num_classes == 4
    assert other.num_classes == 3


def test_merge_conflicting_definition_raises(registry):
    other = LabelRegistry()
    other.add_dataset("D07", {"liver": [1, 2]})
    with pytest.raises(ValueError, match="'D07' is defined differently"):
        registry.merge(other)


def test_merge_conflicting_label_values_raises(registry):
    other = LabelRegistry()
    other.add_dataset("D07", {"liver": [1], "spleen": [2]}, label_values=[0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"label values \[0, 1, 2, 3\]"):
        registry.merge(other)


def test_merge_different_class_order_raises(registry):
    other = LabelRegistry()
    other.add_dataset("D07", {"spleen": [2], "liver": [1]})
    with pytest.raises(ValueError, match="'D07' is defined differently"):
        registry.merge(other)


def test_equality_depends_on_class_order():
    first = LabelRegistry()
    first.add_dataset("D01", {"liver": [1], "spleen": [2]})
    second = LabelRegistry()
    second.add_dataset("D01", {"spleen": [2], "liver": [1]})
    assert first != second


def test_merged_registry_encodes_new_dataset(registry):
    other = LabelRegistry()
    other.add_dataset("D09", {"kidney": [1]})
    merged = registry.merge(other)
    encoded = merged.encode_targets(torch.tensor([0, 1]), "D09")
    assert encoded.tolist() == [[0, 0], [0, 0], [0, 0], [0, 0], [0, 1]]


def test_save_load_keeps_merged_order(registry, tmp_path):
    other = LabelRegistry()
    other.add_dataset("A00", {"zeta": [1], "alpha": [2]})
    merged = registry.merge(other)
    restored = LabelRegistry.load(merged.save(tmp_path / "labels.json"))
    assert restored.class_names == [
        "D01/liver",
        "D01/liver_tumor",
        "D07/liver",
        "D07/spleen",
        "A00/zeta",
        "A00/alpha",
    ]
