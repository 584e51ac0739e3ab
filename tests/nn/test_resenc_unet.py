import pytest
import torch

from partialseg.nn import ResEncUNet, create_model
from partialseg.nn.resenc_unet import ResidualBlock


def test_multitalent_resenc_parameter_count():
    model = create_model("multitalent_resenc_unet")
    assert sum(p.numel() for p in model.parameters()) == 69_335_475


def test_multitalent_resenc_published_output_shapes(published_state_dicts):
    model = create_model("multitalent_resenc_unet").eval()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 1, 32, 64, 64))
    expected = published_state_dicts["resenc"]["ds_output_shapes_for_1x1x32x64x64"]
    assert [list(out.shape) for out in outputs] == expected


def test_multitalent_resenc_topology():
    args = create_model("multitalent_resenc_unet", features_per_stage=[4] * 6).model_args
    assert args["strides"] == [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 4
    assert args["kernel_sizes"] == [[1, 3, 3]] + [[3, 3, 3]] * 5
    assert args["blocks_per_stage"] == [1, 2, 3, 4, 4, 4]
    assert args["n_conv_per_stage_decoder"] == 1


def test_resenc_heads_have_bias():
    model = create_model("multitalent_resenc_unet", features_per_stage=[4] * 6)
    assert model.heads.bias is not None
    assert model.heads.bias[0].shape == (47,)


def test_resenc_convs_have_no_bias():
    model = create_model("resenc_unet", classes=1)
    convs = [
        m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))
    ]
    assert convs
    assert all(conv.bias is None for conv in convs)


def test_resenc_last_norm_zero_initialised():
    model = create_model("resenc_unet", classes=1)
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 7
    for block in blocks:
        assert torch.count_nonzero(block.norm2.weight) == 0
        assert torch.count_nonzero(block.norm1.weight) == block.norm1.weight.numel()


def test_residual_block_starts_as_shortcut():
    torch.manual_seed(0)
    block = ResidualBlock(4, 4, [3, 3, 3], [1, 1, 1])
    torch.nn.init.zeros_(block.norm2.weight)
    torch.nn.init.zeros_(block.norm2.bias)
    x = torch.randn(1, 4, 4, 4, 4)
    expected = torch.nn.functional.leaky_relu(x, 0.01)
    torch.testing.assert_close(block(x), expected)


def test_residual_block_shortcut_when_shape_changes():
    assert isinstance(
        ResidualBlock(4, 4, [3, 3], [1, 1], spatial_dims=2).shortcut, torch.nn.Identity
    )
    strided = ResidualBlock(4, 4, [3, 3], [2, 2], spatial_dims=2)
    assert isinstance(strided.shortcut, torch.nn.Sequential)
    wider = ResidualBlock(4, 8, [3, 3], [1, 1], spatial_dims=2)
    assert isinstance(wider.shortcut, torch.nn.Sequential)


def test_resenc_unet_2d():
    model = ResEncUNet(
        num_classes=2,
        features_per_stage=[4, 8, 8],
        strides=[1, 2, 2],
        blocks_per_stage=[1, 1, 2],
        spatial_dims=2,
    )
    outputs = model(torch.randn(2, 1, 16, 16))
    assert [tuple(out.shape) for out in outputs] == [(2, 2, 16, 16), (2, 2, 8, 8)]


def test_resenc_blocks_per_stage_length():
    with pytest.raises(ValueError, match="for each of the 3 stages"):
        ResEncUNet(
            num_classes=1, features_per_stage=[4, 8, 8], strides=[1, 2, 2], blocks_per_stage=[1, 1]
        )


def test_resenc_input_not_divisible():
    model = create_model("resenc_unet", classes=1)
    with pytest.raises(ValueError, match="must be divisible by"):
        model(torch.randn(1, 1, 12, 16, 16))
