import itertools
import json

import pytest
import torch

from partialseg.nn import create_model, list_models
from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.registry import resolve_classes

# One tiny configuration and a fitting input shape per registered network, so the
# generic tests below run in a few seconds. Registering a network without adding
# it here fails test_every_model_has_tiny_config.
TINY = {
    "plain_unet": (
        {"features_per_stage": [4, 8, 16], "strides": [1, 2, 2]},
        (2, 1, 8, 16, 16),
    ),
    "multitalent_unet": (
        {"features_per_stage": [4, 4, 4, 4, 4, 4]},
        (1, 1, 32, 64, 64),
    ),
    "resenc_unet": (
        {"features_per_stage": [4, 8, 16], "strides": [1, 2, 2], "blocks_per_stage": [1, 2, 1]},
        (2, 1, 8, 16, 16),
    ),
    "multitalent_resenc_unet": (
        {"features_per_stage": [4, 4, 4, 4, 4, 4]},
        (1, 1, 32, 64, 64),
    ),
    "timm_unet_2d": (
        {"encoder": "test_resnet", "decoder_channels": [16, 8, 8, 8, 8]},
        (2, 3, 64, 64),
    ),
    "swinunetr": (
        {"feature_size": 12, "depths": [1, 1, 1, 1], "spatial_dims": 2},
        (2, 1, 64, 64),
    ),
}
CLASSES = ["liver", "spleen", "aorta"]


def build(name, **overrides):
    kwargs, shape = TINY[name]
    torch.manual_seed(0)
    model = create_model(name, classes=CLASSES, **{**kwargs, **overrides})
    return model, torch.randn(shape)


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_tiny_config(name):
    assert name in TINY, f"add a tiny configuration for {name!r} to TINY"


@pytest.mark.parametrize("name", list_models())
def test_model_deep_supervision_shapes(name):
    model, x = build(name)
    outputs = model(x)
    assert isinstance(outputs, list)
    assert len(outputs) >= 2
    assert outputs[0].shape == (x.shape[0], len(CLASSES), *x.shape[2:])
    for higher, lower in itertools.pairwise(outputs):
        assert lower.shape[:2] == higher.shape[:2]
        assert all(lo <= hi for lo, hi in zip(lower.shape[2:], higher.shape[2:], strict=True))


@pytest.mark.parametrize("name", list_models())
def test_model_without_deep_supervision(name):
    model, x = build(name)
    full = model(x)[0]
    model.deep_supervision = False
    output = model(x)
    assert isinstance(output, torch.Tensor)
    torch.testing.assert_close(output, full)


@pytest.mark.parametrize("name", list_models())
def test_model_backward_reaches_parameters(name):
    model, x = build(name)
    loss = sum(out.mean() for out in model(x))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("name", list_models())
def test_model_is_segmentation_network(name):
    model, _ = build(name)
    assert isinstance(model, SegmentationNetwork)
    assert model.architecture == name
    assert model.class_names == CLASSES


@pytest.mark.parametrize("name", list_models())
def test_model_args_rebuild_same_network(name):
    model, x = build(name)
    model.eval()
    args = json.loads(json.dumps(model.model_args))
    rebuilt = create_model(model.architecture, classes=model.class_names, **args).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[0], model(x)[0])


@pytest.mark.parametrize("name", list_models())
def test_model_state_dict_round_trip(name, tmp_path):
    model, x = build(name)
    model.eval()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    fresh = create_model(name, classes=CLASSES, **TINY[name][0]).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)[0], model(x)[0])


@pytest.mark.parametrize("name", list_models())
def test_model_class_editing(name):
    model, x = build(name)
    model.eval()
    with torch.no_grad():
        before = model(x)[0]
        model.add_classes(["kidney"])
        model.reorder_classes(["kidney", "aorta", "liver", "spleen"])
        model.remove_classes(["spleen"])
        after = model(x)[0]
    assert model.class_names == ["kidney", "aorta", "liver"]
    torch.testing.assert_close(after[:, 1], before[:, 2])
    torch.testing.assert_close(after[:, 2], before[:, 0])


def test_create_model_unknown_name():
    with pytest.raises(ValueError, match=r"unknown model 'plain_unt'; did you mean 'plain_unet'"):
        create_model("plain_unt", classes=2)


def test_create_model_without_classes():
    with pytest.raises(ValueError, match="no default classes"):
        create_model("plain_unet")


def test_resolve_classes_forms():
    class Registry:
        class_names = ("a/x", "b/y")

    assert resolve_classes(["a", "b"]) == ["a", "b"]
    assert resolve_classes(2) == ["class_0", "class_1"]
    assert resolve_classes(Registry()) == ["a/x", "b/y"]
    assert resolve_classes(None) is None


@pytest.mark.parametrize("bad", [0, -1])
def test_resolve_classes_bad_count(bad):
    with pytest.raises(ValueError, match="positive count"):
        resolve_classes(bad)


@pytest.mark.parametrize("bad", ["liver", 1.5, True])
def test_resolve_classes_bad_type(bad):
    with pytest.raises(TypeError):
        resolve_classes(bad)


def test_list_models_contains_published():
    assert {"plain_unet", "multitalent_unet"} <= set(list_models())
