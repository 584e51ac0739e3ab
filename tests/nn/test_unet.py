import pytest
import torch

from partialseg.nn import PlainUNet, create_model, plan_topology
from partialseg.nn.blocks import expand_per_stage
from partialseg.nn.registry import multitalent_class_names


def test_multitalent_unet_parameter_count():
    model = create_model("multitalent_unet")
    assert sum(p.numel() for p in model.parameters()) == 29_319_560


def test_multitalent_unet_default_classes():
    model = create_model("multitalent_unet")
    assert model.class_names == multitalent_class_names()
    assert model.num_classes == 47
    assert model.class_names[:2] == ["03_liver", "03_cancer"]


def test_multitalent_unet_published_output_shapes(published_state_dicts):
    model = create_model("multitalent_unet").eval()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 1, 32, 64, 64))
    expected = published_state_dicts["plain"]["ds_output_shapes_for_1x1x32x64x64"]
    assert [list(out.shape) for out in outputs] == expected


def test_multitalent_unet_topology():
    args = create_model("multitalent_unet").model_args
    assert args["features_per_stage"] == [30, 60, 120, 240, 320, 320]
    assert args["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert args["kernel_sizes"] == [[3, 3, 3]] * 6


def test_plain_unet_heads_have_no_bias():
    model = create_model("multitalent_unet", features_per_stage=[4] * 6)
    assert model.heads.bias is None
    assert model.decoder.upsamples[0].bias is None


def test_plain_unet_2d():
    model = PlainUNet(
        in_channels=3, num_classes=2, features_per_stage=[4, 8], strides=[1, 2], spatial_dims=2
    )
    outputs = model(torch.randn(2, 3, 8, 8))
    assert [tuple(out.shape) for out in outputs] == [(2, 2, 8, 8)]
    assert model.heads.weight[0].shape == (2, 4, 1, 1)


def test_plain_unet_anisotropic_strides():
    model = PlainUNet(num_classes=1, features_per_stage=[4, 8, 8], strides=[1, (1, 2, 2), 2])
    outputs = model(torch.randn(1, 1, 4, 8, 8))
    assert [tuple(out.shape[2:]) for out in outputs] == [(4, 8, 8), (4, 4, 4)]


def test_plain_unet_input_not_divisible():
    model = PlainUNet(num_classes=1, features_per_stage=[4, 8, 8], strides=[1, 2, 2])
    with pytest.raises(ValueError, match=r"\(6, 8, 8\) must be divisible by \(4, 4, 4\)"):
        model(torch.randn(1, 1, 6, 8, 8))


def test_plain_unet_input_wrong_rank():
    model = PlainUNet(num_classes=1, features_per_stage=[4, 8], strides=[1, 2])
    with pytest.raises(ValueError, match="3 spatial axes"):
        model(torch.randn(1, 8, 8))


def test_plain_unet_class_count_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        PlainUNet(class_names=["a"], num_classes=2, features_per_stage=[4, 8], strides=[1, 2])


def test_plain_unet_needs_classes():
    with pytest.raises(ValueError, match="class_names or a positive num_classes"):
        PlainUNet(features_per_stage=[4, 8], strides=[1, 2])


def test_plain_unet_one_stage_rejected():
    with pytest.raises(ValueError, match="at least 2 stages"):
        PlainUNet(num_classes=1, features_per_stage=[4], strides=[1])


def test_plain_unet_class_names_follow_heads():
    model = PlainUNet(class_names=["a", "b"], features_per_stage=[4, 8], strides=[1, 2])
    model.add_classes(["c"])
    assert model.class_names == ["a", "b", "c"]
    assert model.num_classes == 3


def test_expand_per_stage_forms():
    assert expand_per_stage(3, num_stages=2, spatial_dims=2, name="k") == [[3, 3], [3, 3]]
    assert expand_per_stage([1, (1, 2)], num_stages=2, spatial_dims=2, name="k") == [
        [1, 1],
        [1, 2],
    ]


def test_expand_per_stage_wrong_stage_count():
    with pytest.raises(ValueError, match=r"one entry per stage \(3\)"):
        expand_per_stage([1, 2], num_stages=3, spatial_dims=3, name="strides")


def test_expand_per_stage_wrong_axis_count():
    with pytest.raises(ValueError, match="3 positive ints"):
        expand_per_stage([1, (2, 2)], num_stages=2, spatial_dims=3, name="strides")


def test_plan_topology_published_plans():
    topology = plan_topology((96, 192, 192), (1.5, 1.0, 1.0), base_features=30)
    assert topology.strides == [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[1, 2, 2]]
    assert topology.kernel_sizes == [[3, 3, 3]] * 6
    assert topology.features_per_stage == [30, 60, 120, 240, 320, 320]
    assert topology.patch_size == [96, 192, 192]


def test_plan_topology_anisotropic():
    topology = plan_topology((16, 128, 128), (5.0, 1.0, 1.0))
    assert topology.strides[1] == [1, 2, 2]
    assert topology.kernel_sizes[0] == [1, 3, 3]
    assert topology.kernel_sizes[-1] == [3, 3, 3]
    assert topology.patch_size[0] % 4 == 0


def test_plan_topology_rounds_patch_size():
    topology = plan_topology((30, 30), (1.0, 1.0))
    assert topology.strides == [[1, 1], [2, 2], [2, 2]]
    assert topology.patch_size == [32, 32]


def test_plan_topology_max_stages():
    topology = plan_topology((64, 64, 64), (1.0, 1.0, 1.0), max_stages=3)
    assert len(topology.strides) == 3


def test_plan_topology_builds_network():
    topology = plan_topology((16, 32, 32), (2.0, 1.0, 1.0), base_features=4, max_features=8)
    model = create_model("plain_unet", classes=2, **topology.model_args())
    outputs = model(torch.randn(1, 1, *topology.patch_size))
    assert outputs[0].shape == (1, 2, *topology.patch_size)


def test_plan_topology_length_mismatch():
    with pytest.raises(ValueError, match="2 or 3 entries"):
        plan_topology((32, 32, 32), (1.0, 1.0))
