import pytest
import torch

from partialseg.nn import create_model, list_models
from partialseg.nn.adapters import TimmUNet2d


def test_timm_unet_default_decoder_channels():
    model = TimmUNet2d(encoder="test_resnet", num_classes=2)
    assert model.model_args["decoder_channels"] == [192, 48, 32, 32, 16]
    assert model.heads.in_channels == [16, 32, 32, 48, 192]


def test_timm_unet_output_resolutions():
    model = create_model("timm_unet_2d", classes=2, encoder="test_resnet", in_channels=1)
    outputs = model(torch.randn(2, 1, 64, 64))
    assert [tuple(out.shape[2:]) for out in outputs] == [
        (64, 64),
        (32, 32),
        (16, 16),
        (8, 8),
        (4, 4),
    ]


def test_timm_unet_encoder_without_stride_two_feature():
    model = create_model("timm_unet_2d", classes=1, encoder="test_convnext")
    outputs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(out.shape[2:]) for out in outputs] == [(64, 64), (16, 16), (8, 8), (4, 4)]


def test_timm_unet_pretrained_not_stored():
    model = create_model("timm_unet_2d", classes=1, encoder="test_resnet", pretrained=False)
    assert "pretrained" not in model.model_args


def test_timm_unet_decoder_channels_length():
    with pytest.raises(ValueError, match="must give 5 positive channel counts"):
        create_model("timm_unet_2d", classes=1, encoder="test_resnet", decoder_channels=[8, 8])


def test_timm_unet_input_not_divisible():
    model = create_model("timm_unet_2d", classes=1, encoder="test_resnet")
    with pytest.raises(ValueError, match=r"must be divisible by \(32, 32\)"):
        model(torch.randn(1, 3, 48, 64))


def test_swinunetr_output_resolutions():
    pytest.importorskip("monai")
    model = create_model("swinunetr", classes=2, feature_size=12, depths=[1, 1, 1, 1]).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 1, 64, 64, 64))
    sizes = [tuple(out.shape[2:]) for out in outputs]
    assert sizes == [(64,) * 3, (32,) * 3, (16,) * 3, (8,) * 3, (4,) * 3]
    assert model.heads.in_channels == [12, 12, 24, 48, 96]


def test_swinunetr_registered_with_monai():
    pytest.importorskip("monai")
    assert "swinunetr" in list_models()


def test_swinunetr_has_no_unused_output_conv():
    pytest.importorskip("monai")
    model = create_model("swinunetr", classes=1, feature_size=12, depths=[1, 1, 1, 1])
    assert not any(key.startswith("backbone.out.") for key in model.state_dict())
