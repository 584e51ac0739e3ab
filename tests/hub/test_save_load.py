import json

import pytest
import torch

from partialseg.hub import (
    CONFIG_NAME,
    FORMAT_VERSION,
    MODEL_CARD_NAME,
    WEIGHTS_NAME,
    from_pretrained,
    save_pretrained,
)
from partialseg.nn import SegmentationNetwork

from .conftest import TINY_UNET, make_registry, outputs_of


def test_save_writes_three_files(network, tmp_path):
    folder = save_pretrained(network, tmp_path / "model")

    assert folder == tmp_path / "model"
    names = sorted(path.name for path in folder.iterdir())
    assert names == [MODEL_CARD_NAME, CONFIG_NAME, WEIGHTS_NAME]


def test_config_fields_and_sorted_keys(network, tmp_path):
    save_pretrained(network, tmp_path)
    text = (tmp_path / CONFIG_NAME).read_text()
    config = json.loads(text)

    assert list(config) == sorted(config)
    assert config["architecture"] == "plain_unet"
    assert config["model_args"] == network.model_args
    assert config["class_names"] == ["D03/liver", "D03/liver_tumor", "D09/spleen"]
    assert config["labels"] == make_registry().to_dict()
    assert config["preprocessing"] == network.preprocessing.to_dict()
    assert config["format_version"] == FORMAT_VERSION
    assert isinstance(config["partialseg_version"], str)


def test_local_round_trip_outputs_identical(network, image, tmp_path):
    save_pretrained(network, tmp_path)
    loaded = from_pretrained(tmp_path)

    assert isinstance(loaded, SegmentationNetwork)
    assert not loaded.training
    assert loaded.class_names == network.class_names
    assert loaded.model_args == network.model_args
    for expected, actual in zip(outputs_of(network, image), outputs_of(loaded, image), strict=True):
        assert torch.equal(expected, actual)


def test_round_trip_restores_registry_and_preprocessing(network, tmp_path):
    save_pretrained(network, tmp_path)
    loaded = from_pretrained(str(tmp_path))

    assert loaded.label_registry == network.label_registry
    assert loaded.preprocessing == network.preprocessing


def test_round_trip_without_registry_or_preprocessing(tmp_path):
    from partialseg.nn import create_model

    network = create_model("plain_unet", classes=["a", "b"], **TINY_UNET)
    save_pretrained(network, tmp_path, model_card=False)
    loaded = from_pretrained(tmp_path)

    assert not (tmp_path / MODEL_CARD_NAME).exists()
    assert loaded.label_registry is None
    assert loaded.preprocessing is None
    assert loaded.class_names == ["a", "b"]


def test_state_dict_identical_after_round_trip(network, tmp_path):
    save_pretrained(network, tmp_path)
    loaded = from_pretrained(tmp_path)

    expected = network.state_dict()
    actual = loaded.state_dict()
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


def test_network_methods_delegate(network, tmp_path):
    folder = network.save_pretrained(tmp_path / "model")
    loaded = SegmentationNetwork.from_pretrained(folder)

    assert loaded.class_names == network.class_names


def test_map_location_moves_network(network, tmp_path):
    save_pretrained(network, tmp_path)
    loaded = from_pretrained(tmp_path, map_location=torch.device("cpu"))

    assert {parameter.device.type for parameter in loaded.parameters()} == {"cpu"}


def test_revision_for_local_directory_warns(network, tmp_path):
    save_pretrained(network, tmp_path)

    with pytest.warns(UserWarning, match="revision='v1' is ignored"):
        from_pretrained(tmp_path, revision="v1")
