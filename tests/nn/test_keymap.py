import pytest
import torch

from partialseg.nn import SegmentationNetwork, create_model
from partialseg.nn.keymap import from_v1_state_dict, to_v1_state_dict, v1_key_map

PUBLISHED = [("multitalent_unet", "plain"), ("multitalent_resenc_unet", "resenc")]


@pytest.fixture(scope="module", params=PUBLISHED, ids=[name for name, _ in PUBLISHED])
def published_network(request):
    name, reference_name = request.param
    return create_model(name), reference_name


def test_key_map_covers_published_keys(published_network, published_state_dicts):
    network, reference_name = published_network
    published = {key for key, _ in published_state_dicts[reference_name]["keys"]}
    assert set(v1_key_map(network)) == published


def test_key_map_covers_our_state_dict(published_network):
    network, _ = published_network
    assert set(v1_key_map(network).values()) == set(network.state_dict())


def test_key_map_shapes_match_published(published_network, published_state_dicts):
    network, reference_name = published_network
    ours = network.state_dict()
    key_map = v1_key_map(network)
    mismatched = [
        (key, shape, tuple(ours[key_map[key]].shape))
        for key, shape in published_state_dicts[reference_name]["keys"]
        if tuple(ours[key_map[key]].shape) != tuple(shape)
    ]
    assert mismatched == []


def test_key_map_head_levels_reversed():
    network = create_model("multitalent_resenc_unet", features_per_stage=[4] * 6)
    key_map = v1_key_map(network)
    assert key_map["decoder.deep_supervision_outputs.0.weight"] == "heads.weight.4"
    assert key_map["decoder.deep_supervision_outputs.4.bias"] == "heads.bias.0"
    assert key_map["decoder.stages.2.convs.0.all.0.weight"] == "decoder.stages.2.0.conv.weight"


@pytest.mark.parametrize("name", ["multitalent_unet", "multitalent_resenc_unet"])
def test_v1_round_trip_with_prefix(name):
    torch.manual_seed(0)
    network = create_model(name, classes=2, features_per_stage=[2, 2, 4, 4, 4, 4])
    state_dict = network.state_dict()
    v1 = to_v1_state_dict(state_dict, network, prefix="module.")
    assert all(key.startswith("module.") for key in v1)
    restored = from_v1_state_dict(v1, network)
    assert restored.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(restored[key], value), key


def test_from_v1_missing_key():
    network = create_model("multitalent_unet", classes=2, features_per_stage=[2] * 6)
    v1 = to_v1_state_dict(network.state_dict(), network)
    del v1["tu.0.weight"]
    with pytest.raises(KeyError, match=r"missing keys \['tu.0.weight'\]"):
        from_v1_state_dict(v1, network)


def test_from_v1_unexpected_key():
    network = create_model("multitalent_unet", classes=2, features_per_stage=[2] * 6)
    v1 = to_v1_state_dict(network.state_dict(), network)
    v1["seg_outputs.0.bias"] = torch.zeros(2)
    with pytest.raises(KeyError, match=r"unexpected keys \['seg_outputs.0.bias'\]"):
        from_v1_state_dict(v1, network)


def test_from_v1_alias_mismatch():
    network = create_model("multitalent_resenc_unet", classes=2, features_per_stage=[2] * 6)
    v1 = to_v1_state_dict(network.state_dict(), network)
    key = "decoder.stages.0.convs.0.all.2.weight"
    v1[key] = v1[key] + 1
    with pytest.raises(ValueError, match="different values"):
        from_v1_state_dict(v1, network)


def test_key_map_unsupported_network():
    network = SegmentationNetwork(architecture="other", model_args={}, class_names=["a"])
    with pytest.raises(TypeError, match="only PlainUNet and ResEncUNet"):
        v1_key_map(network)
