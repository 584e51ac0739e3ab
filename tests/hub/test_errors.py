"""Clear errors for malformed configs, unknown architectures and mismatched weights."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from partialseg.hub import (
    InvalidModelConfigError,
    InvalidWeightsFileError,
    ModelNotFoundError,
    WeightsMismatchError,
    from_pretrained,
    save_pretrained,
)


@pytest.fixture
def saved(tmp_path, network):
    save_pretrained(network, tmp_path, model_card=False)
    return tmp_path


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def edit_weights(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_config_not_json(saved):
    (saved / "config.json").write_text("{not json")

    with pytest.raises(InvalidModelConfigError, match="is not valid JSON") as caught:
        from_pretrained(saved)

    assert str(saved) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_config_not_object(saved):
    (saved / "config.json").write_text("[1, 2]")

    with pytest.raises(InvalidModelConfigError, match="must contain a JSON object, got list"):
        from_pretrained(saved)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("architecture", 3, "'architecture' must be a JSON string, got int 3"),
        ("model_args", [], "'model_args' must be a JSON object"),
        ("class_names", [], "'class_names' must be a non-empty list"),
        ("class_names", ["a", "a"], r"'class_names' repeats \['a'\]"),
        ("format_version", True, "'format_version' must be a JSON integer"),
        ("labels", "D03", "'labels' must be a JSON object or null"),
    ],
    ids=["architecture-int", "model-args-list", "no-classes", "repeated-class", "bool", "labels"],
)
def test_config_field_invalid(saved, field, value, expected):
    edit_config(saved, **{field: value})

    with pytest.raises(InvalidModelConfigError, match=expected):
        from_pretrained(saved)


def test_config_field_missing(saved):
    config = json.loads((saved / "config.json").read_text())
    del config["class_names"]
    (saved / "config.json").write_text(json.dumps(config))

    with pytest.raises(InvalidModelConfigError, match="missing the required field 'class_names'"):
        from_pretrained(saved)


def test_config_newer_format(saved):
    edit_config(saved, format_version=99, partialseg_version="9.0")

    with pytest.raises(InvalidModelConfigError, match=r"partialseg 9.0.*Upgrade partialseg"):
        from_pretrained(saved)


def test_unknown_architecture_lists_known(saved):
    edit_config(saved, architecture="plain_unte")

    with pytest.raises(InvalidModelConfigError) as caught:
        from_pretrained(saved)

    message = str(caught.value)
    assert "unknown architecture 'plain_unte'" in message
    assert "did you mean 'plain_unet'" in message
    assert "'multitalent_unet'" in message


def test_model_args_rejected(saved):
    edit_config(saved, model_args={"features_per_stage": [4]})

    with pytest.raises(InvalidModelConfigError, match="rejected the model_args"):
        from_pretrained(saved)


def test_invalid_labels(saved):
    edit_config(saved, labels={"format_version": 1, "datasets": [{"name": "D/1"}]})

    with pytest.raises(InvalidModelConfigError, match=r"'labels'.*not a valid label registry"):
        from_pretrained(saved)


def test_invalid_preprocessing(saved):
    edit_config(saved, preprocessing={"spacing": [1.0, 1.0, 1.0]})

    with pytest.raises(InvalidModelConfigError, match=r"'preprocessing'.*invalid"):
        from_pretrained(saved)


def test_weights_missing_key(saved):
    edit_weights(saved, lambda tensors: tensors.pop("heads.weight.0"))

    with pytest.raises(WeightsMismatchError, match=r"missing keys \[heads\.weight\.0\]") as caught:
        from_pretrained(saved)

    assert isinstance(caught.value, RuntimeError)
    assert "strict=False" in str(caught.value)


def test_weights_unexpected_key(saved):
    edit_weights(saved, lambda tensors: tensors.update(extra=torch.zeros(2)))

    with pytest.raises(WeightsMismatchError, match=r"unexpected keys \[extra\]"):
        from_pretrained(saved)


def test_weights_shape_mismatch(saved):
    edit_weights(saved, lambda tensors: tensors.update({"heads.weight.0": torch.zeros(5, 4, 1, 1)}))

    with pytest.raises(WeightsMismatchError) as caught:
        from_pretrained(saved)

    assert "heads.weight.0: saved (5, 4, 1, 1), network (3, 4, 1, 1)" in str(caught.value)


def test_not_strict_loads_matching(saved, network):
    def edit(tensors):
        tensors.pop("decoder.stages.0.0.conv.bias")
        tensors["heads.weight.0"] = torch.zeros(5, 4, 1, 1)

    edit_weights(saved, edit)

    with pytest.warns(UserWarning, match="skipped|keep their initialisation") as records:
        loaded = from_pretrained(saved, strict=False)

    messages = [str(record.message) for record in records]
    assert any("skipped heads.weight.0" in message for message in messages)
    assert any("decoder.stages.0.0.conv.bias" in message for message in messages)
    encoder_key = "encoder.stages.0.0.conv.weight"
    assert torch.equal(loaded.state_dict()[encoder_key], network.state_dict()[encoder_key])


def test_weights_file_corrupt(saved):
    (saved / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")

    with pytest.raises(InvalidWeightsFileError, match=r"cannot read .* as a safetensors file"):
        from_pretrained(saved)


def test_labels_disagree_with_class_names(saved):
    from partialseg.labels import LabelRegistry

    registry = LabelRegistry()
    registry.add_dataset("D03", {"liver": [1, 2]})
    edit_config(saved, labels=registry.to_dict())

    with pytest.warns(UserWarning, match=r"lists the classes \['D03/liver'\]"):
        loaded = from_pretrained(saved)

    assert loaded.label_registry == registry
    assert loaded.class_names == ["D03/liver", "D03/liver_tumor", "D09/spleen"]


def test_mistyped_local_path_not_sent_to_hub(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="its parent folder 'runs' does"):
        from_pretrained("runs/mdoel")
