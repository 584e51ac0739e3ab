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


def test_save_into_existing_directory(network, tmp_path):
    from .conftest import make_network

    save_pretrained(make_network(classes=["old"]), tmp_path)
    (tmp_path / "train_log.txt").write_text("epoch 1")

    save_pretrained(network, tmp_path)

    assert (tmp_path / "train_log.txt").read_text() == "epoch 1"
    assert from_pretrained(tmp_path).class_names == network.class_names
    leftovers = [path.name for path in tmp_path.parent.iterdir() if path.name.endswith(".partial")]
    assert leftovers == []


def test_save_leaves_no_staging_folder(network, tmp_path):
    save_pretrained(network, tmp_path / "model")

    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_save_to_file_rejected(network, tmp_path):
    target = tmp_path / "model.bin"
    target.write_text("x")

    with pytest.raises(NotADirectoryError, match="it is a file"):
        save_pretrained(network, target)


def fail_after_partial_write(tensors, filename, metadata=None):
    with open(filename, "wb") as file:
        file.write(b"half a file")
    raise OSError("disk full")


def test_failed_save_leaves_no_model(network, tmp_path, monkeypatch):
    monkeypatch.setattr("partialseg.hub.serialization.save_file", fail_after_partial_write)

    with pytest.raises(OSError, match="disk full"):
        save_pretrained(network, tmp_path / "model")

    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_previous_model(network, tmp_path, monkeypatch):
    save_pretrained(network, tmp_path / "model")
    monkeypatch.setattr("partialseg.hub.serialization.save_file", fail_after_partial_write)

    with pytest.raises(OSError, match="disk full"):
        save_pretrained(network, tmp_path / "model")

    assert [path.name for path in tmp_path.iterdir()] == ["model"]
    assert from_pretrained(tmp_path / "model").class_names == network.class_names


def test_model_args_not_json(network, tmp_path):
    network.model_args["activation"] = torch.nn.ReLU

    with pytest.raises(TypeError, match=r"model_args\['activation'\] .* cannot be written"):
        save_pretrained(network, tmp_path)


class TiedNetwork(SegmentationNetwork):
    def __init__(self, *, class_names, width=3):
        super().__init__(
            architecture="hub_test_tied", model_args={"width": width}, class_names=class_names
        )
        self.encode = torch.nn.Linear(width, width, bias=False)
        self.decode = torch.nn.Linear(width, width, bias=False)
        self.decode.weight = self.encode.weight
        values = torch.arange(2 * width, dtype=torch.float32)
        self.register_buffer("lower", values[:width])
        self.register_buffer("upper", values[width:])


@pytest.fixture
def tied_architecture():
    from partialseg.nn import register_model
    from partialseg.nn.registry import _BUILDERS

    register_model("hub_test_tied")(TiedNetwork)
    yield "hub_test_tied"
    _BUILDERS.pop("hub_test_tied")


def test_tied_weights_round_trip(tied_architecture, tmp_path):
    from partialseg.nn import create_model

    network = create_model(tied_architecture, classes=["a"])
    torch.nn.init.normal_(network.encode.weight)
    save_pretrained(network, tmp_path, model_card=False)

    loaded = from_pretrained(tmp_path)

    assert loaded.decode.weight is loaded.encode.weight
    assert torch.equal(loaded.encode.weight, network.encode.weight)
    assert torch.equal(loaded.lower, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(loaded.upper, torch.tensor([3.0, 4.0, 5.0]))


def test_top_level_loader(network, tmp_path):
    import partialseg

    save_pretrained(network, tmp_path)

    assert partialseg.from_pretrained(tmp_path).class_names == network.class_names


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip(network, image, tmp_path):
    save_pretrained(network.cuda(), tmp_path)

    loaded = from_pretrained(tmp_path, map_location="cuda")

    assert {parameter.device.type for parameter in loaded.parameters()} == {"cuda"}
    expected = outputs_of(network, image.cuda())
    actual = outputs_of(loaded, image.cuda())
    for level_expected, level_actual in zip(expected, actual, strict=True):
        assert torch.equal(level_expected, level_actual)
