"""Loading pretrained weights for new classes: backbone kept, heads matched by class name."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from partialseg.hub import (
    WeightsMismatchError,
    from_pretrained,
    save_pretrained,
    transfer_weights,
)
from partialseg.labels import LabelRegistry
from partialseg.nn import ClassHeads, create_model

from .conftest import make_network

THREE_LEVELS = {"features_per_stage": [4, 8, 16], "strides": [1, 2, 2], "spatial_dims": 2}


@pytest.fixture
def pretrained(tmp_path):
    """A 3-level network with classes D03/liver, D03/liver_tumor, D09/spleen, saved."""
    torch.manual_seed(0)
    registry = LabelRegistry()
    registry.add_dataset("D03", {"liver": [1, 2], "liver_tumor": [2]})
    registry.add_dataset("D09", {"spleen": [1]})
    network = create_model("plain_unet", classes=registry, **THREE_LEVELS)
    network.label_registry = registry
    network.preprocessing = make_network().preprocessing
    save_pretrained(network, tmp_path, model_card=False)
    return network, tmp_path


@pytest.fixture
def new_registry():
    registry = LabelRegistry()
    registry.add_dataset("D09", {"spleen": [1]})
    registry.add_dataset("D50", {"kidney": [1], "kidney_tumor": [2]})
    registry.add_dataset("D03", {"liver": [1, 2]})
    return registry


def test_kept_heads_equal_old_rows(pretrained, new_registry):
    old, folder = pretrained

    tuned = from_pretrained(folder, classes=new_registry)

    assert tuned.class_names == ["D09/spleen", "D50/kidney", "D50/kidney_tumor", "D03/liver"]
    for level in range(2):
        old_weight = old.heads.weight[level]
        new_weight = tuned.heads.weight[level]
        assert new_weight.shape == (4, *old_weight.shape[1:])
        assert torch.equal(new_weight[0], old_weight[2])  # D09/spleen
        assert torch.equal(new_weight[3], old_weight[0])  # D03/liver


def test_new_heads_fresh(pretrained, new_registry):
    old, folder = pretrained

    tuned = from_pretrained(folder, classes=new_registry)

    for level in range(2):
        old_rows = old.heads.weight[level]
        for new_row in (1, 2):
            row = tuned.heads.weight[level][new_row]
            assert not any(torch.equal(row, old_row) for old_row in old_rows)
            assert row.abs().sum() > 0


def test_backbone_equals_pretrained(pretrained, new_registry):
    old, folder = pretrained

    tuned = from_pretrained(folder, classes=new_registry)

    old_state = old.state_dict()
    backbone = [key for key in old_state if not key.startswith("heads.")]
    assert backbone
    for key in backbone:
        assert torch.equal(tuned.state_dict()[key], old_state[key]), key


def test_registry_replaced_preprocessing_kept(pretrained, new_registry):
    old, folder = pretrained

    tuned = from_pretrained(folder, classes=new_registry)

    assert tuned.label_registry is new_registry
    assert tuned.preprocessing == old.preprocessing


def test_class_names_without_registry(pretrained):
    old, folder = pretrained

    tuned = from_pretrained(folder, classes=["D03/liver_tumor", "organ"])

    assert tuned.label_registry is None
    assert tuned.class_names == ["D03/liver_tumor", "organ"]
    assert torch.equal(tuned.heads.weight[0][0], old.heads.weight[0][1])


def test_only_full_name_matches(pretrained):
    old, folder = pretrained

    tuned = from_pretrained(folder, classes=["liver"])

    assert not torch.equal(tuned.heads.weight[0][0], old.heads.weight[0][0])


def test_report_lists_classes(pretrained, new_registry):
    old, folder = pretrained
    network = create_model("plain_unet", classes=new_registry, **THREE_LEVELS)

    report = transfer_weights(
        network, load_file(folder / "model.safetensors"), source_class_names=old.class_names
    )

    assert report.kept_classes == ["D09/spleen", "D03/liver"]
    assert report.new_classes == ["D50/kidney", "D50/kidney_tumor"]
    assert report.dropped_classes == ["D03/liver_tumor"]
    assert report.skipped == []
    assert report.missing == []
    assert report.unexpected == []
    assert "heads.weight.0" in report.loaded
    assert "new heads for ['D50/kidney', 'D50/kidney_tumor']" in report.summary()


def test_shape_mismatch_skipped_with_warning(pretrained, new_registry):
    old, folder = pretrained
    tensors = load_file(folder / "model.safetensors")
    key = "encoder.stages.0.0.conv.bias"
    tensors[key] = torch.ones(7)
    save_file(tensors, folder / "model.safetensors")

    with pytest.warns(UserWarning, match=rf"skipped {key} .*saved \(7,\), network \(4,\)"):
        tuned = from_pretrained(folder, classes=new_registry)

    assert not torch.equal(tuned.state_dict()[key], torch.ones(4))
    other = "encoder.stages.0.0.conv.weight"
    assert torch.equal(tuned.state_dict()[other], old.state_dict()[other])


def test_missing_backbone_key_strict(pretrained, new_registry):
    _, folder = pretrained
    tensors = load_file(folder / "model.safetensors")
    tensors.pop("decoder.stages.0.0.conv.weight")
    save_file(tensors, folder / "model.safetensors")

    with pytest.raises(WeightsMismatchError, match=r"missing keys \[decoder\.stages\.0\.0"):
        from_pretrained(folder, classes=new_registry)
    with pytest.warns(UserWarning, match="keep their initialisation"):
        from_pretrained(folder, classes=new_registry, strict=False)


class HeadsWithBias(nn.Module):
    def __init__(self, class_names):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3)
        self.output = ClassHeads([4], class_names, spatial_dims=2, bias=True)


def test_bias_rows_follow_classes():
    torch.manual_seed(3)
    old = HeadsWithBias(["a", "b", "c"])
    new = HeadsWithBias(["c", "d", "a"])

    report = transfer_weights(new, old.state_dict(), source_class_names=["a", "b", "c"])

    assert torch.equal(new.output.bias[0][0], old.output.bias[0][2])
    assert torch.equal(new.output.bias[0][2], old.output.bias[0][0])
    assert torch.equal(new.output.weight[0][0], old.output.weight[0][2])
    assert torch.equal(new.stem.weight, old.stem.weight)
    assert report.new_classes == ["d"]


def test_network_without_class_heads():
    with pytest.raises(ValueError, match="has no ClassHeads module"):
        transfer_weights(nn.Linear(2, 2), {}, source_class_names=["a"])
