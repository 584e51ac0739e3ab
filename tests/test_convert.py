import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from partialseg.convert import (
    convert_legacy_checkpoint,
    multitalent_label_registry,
    network_args_from_plans,
)
from partialseg.hub import from_pretrained
from partialseg.nn import create_model
from partialseg.nn.keymap import to_v1_state_dict
from partialseg.nn.registry import multitalent_plans

REPO = Path(__file__).resolve().parents[1]
REFERENCE = (
    Path(os.environ.get("PARTIALSEG_DATA", REPO.parent / "shared" / "data")).parent / "reference"
)
PLAIN_PLANS = "MultiTalent_bs4_plans_3D.pkl"
RESENC_PLANS = "MultiTalent_resenc_bs4_plans_3D.pkl"


def read_reference(name):
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"published reference file not found at {path}")
    return json.loads(path.read_text())


def write_legacy_folder(folder, state_dict, plans, *, wrap_plans=False):
    """Write an nnU-Net v1 model folder: checkpoint dict plus pickled plans."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "epoch": 2000,
        "state_dict": state_dict,
        "optimizer_state_dict": {},
        "plot_stuff": ([], [], [], []),
        "best_stuff": None,
        "amp_grad_scaler": None,
    }
    torch.save(checkpoint, folder / "model_final_checkpoint.model")
    content = {"init": (), "name": "nnUNetTrainerV2", "plans": plans} if wrap_plans else plans
    with open(folder / "model_final_checkpoint.model.pkl", "wb") as file:
        pickle.dump(content, file)
    return folder


def published_dna_unet():
    """dynamic_network_architectures' PlainConvUNet with the published plain topology."""
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    return unet.PlainConvUNet(
        input_channels=1,
        n_stages=6,
        features_per_stage=[30, 60, 120, 240, 320, 320],
        conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * 6,
        strides=strides,
        n_conv_per_stage=2,
        num_classes=47,
        n_conv_per_stage_decoder=2,
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"negative_slope": 1e-2, "inplace": True},
        deep_supervision=True,
    )


def test_convert_plain_matches_reference_network(tmp_path):
    keymap = read_reference("v1_plain_to_dna_keymap.json")
    plans = read_reference("plans_summary.json")[PLAIN_PLANS]
    torch.manual_seed(0)
    reference = published_dna_unet().eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.05)
        for key in keymap["dna_keys_without_v1_counterpart"]:
            reference.get_parameter(key).zero_()
    dna_state = reference.state_dict()
    v1_state = {f"module.{v1}": dna_state[dna] for v1, dna in keymap["v1_to_dna"].items()}
    source = write_legacy_folder(tmp_path / "legacy", v1_state, plans)

    output = convert_legacy_checkpoint(source, tmp_path / "converted", allow_pickle=True)
    converted = from_pretrained(output)

    x = torch.randn(1, 1, 32, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        actual = converted(x)
    assert len(actual) == len(expected) == 5
    for level, (ours, theirs) in enumerate(zip(actual, expected, strict=True)):
        assert ours.shape == theirs.shape, level
        # Same operations in the same order, so the difference is 0.0 on CPU.
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6, msg=f"level {level}")


def test_convert_plain_metadata(tmp_path):
    plans = read_reference("plans_summary.json")[PLAIN_PLANS]
    network = create_model("multitalent_unet")
    state = to_v1_state_dict(network.state_dict(), network, prefix="module.")
    source = write_legacy_folder(tmp_path / "legacy", state, plans, wrap_plans=True)

    output = convert_legacy_checkpoint(source, tmp_path / "converted", allow_pickle=True)
    config = json.loads((output / "config.json").read_text())
    converted = from_pretrained(output)

    assert config["architecture"] == "multitalent_unet"
    assert converted.class_names[0] == "Task003_Liver/03_liver"
    assert converted.label_registry.class_names == converted.class_names
    assert converted.preprocessing.spacing == (1.5, 1.0, 1.0)
    assert converted.preprocessing.patch_size == (96, 192, 192)
    assert converted.preprocessing.ct_clip == (-927.0, 275.0)
    assert converted.preprocessing.ct_mean == pytest.approx(63.437, abs=1e-3)
    assert converted.preprocessing.ct_std == pytest.approx(175.481, abs=1e-3)
    for key, value in network.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


def test_convert_resenc_published_keys_load(tmp_path):
    published = read_reference("net_state_dicts.json")["resenc"]
    plans = read_reference("plans_summary.json")[RESENC_PLANS]
    torch.manual_seed(0)
    state = {key: torch.randn(shape) for key, shape in published["keys"]}
    for key in state:
        if ".all.0." in key:
            state[key] = state[key.replace(".all.0.", ".conv.")]
        if ".all.2." in key:
            state[key] = state[key.replace(".all.2.", ".norm.")]
    prefixed = {f"module.{key}": value for key, value in state.items()}
    source = write_legacy_folder(tmp_path / "legacy", prefixed, plans)

    output = convert_legacy_checkpoint(
        source / "model_final_checkpoint.model", tmp_path / "converted", allow_pickle=True
    )
    converted = from_pretrained(output)

    assert converted.architecture == "multitalent_resenc_unet"
    assert sum(p.numel() for p in converted.parameters()) == published["n_params"]
    assert converted.preprocessing.ct_mean == pytest.approx(63.516, abs=1e-3)
    ours = converted.state_dict()
    assert torch.equal(ours["encoder.stem.conv.weight"], state["encoder.initial_conv.weight"])
    assert torch.equal(ours["heads.bias.0"], state["decoder.deep_supervision_outputs.4.bias"])
    assert torch.equal(ours["heads.weight.4"], state["decoder.deep_supervision_outputs.0.weight"])


def test_convert_requires_allow_pickle(tmp_path):
    network = create_model("multitalent_unet", features_per_stage=[2] * 6)
    source = write_legacy_folder(tmp_path / "legacy", network.state_dict(), {"plans_per_stage": {}})
    with pytest.raises(ValueError, match="can run arbitrary code"):
        convert_legacy_checkpoint(source, tmp_path / "out", allow_pickle=False)
    assert not (tmp_path / "out").exists()


def test_convert_missing_checkpoint(tmp_path):
    (tmp_path / "model_best.model").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"model_best\.model"):
        convert_legacy_checkpoint(tmp_path, tmp_path / "out", allow_pickle=True)


def test_convert_missing_plans(tmp_path):
    (tmp_path / "model_final_checkpoint.model").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="plans file not found"):
        convert_legacy_checkpoint(tmp_path, tmp_path / "out", allow_pickle=True)


def test_convert_rejects_pickle_without_plans(tmp_path):
    network = create_model("multitalent_unet", features_per_stage=[2] * 6)
    source = write_legacy_folder(tmp_path / "legacy", network.state_dict(), {"other": 1})
    with pytest.raises(ValueError, match="no nnU-Net v1 plans"):
        convert_legacy_checkpoint(source, tmp_path / "out", allow_pickle=True)


def test_network_args_from_published_plans():
    plain = network_args_from_plans(multitalent_plans("plain"), residual=False)
    resenc = network_args_from_plans(multitalent_plans("resenc"), residual=True)
    assert plain["features_per_stage"] == [30, 60, 120, 240, 320, 320]
    assert plain["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[1, 2, 2]]
    assert plain["kernel_sizes"] == [[3, 3, 3]] * 6
    assert plain["n_conv_per_stage"] == 2
    assert resenc["features_per_stage"] == [30, 60, 120, 240, 320, 320]
    assert resenc["strides"] == [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 4
    assert resenc["blocks_per_stage"] == [1, 2, 3, 4, 4, 4]
    assert resenc["n_conv_per_stage_decoder"] == 1


def test_multitalent_label_registry():
    registry = multitalent_label_registry()
    channels = read_reference("multitalent_channels.json")["channels"]
    expected = [f"{channel['dataset']}/{channel['region']}" for channel in channels]
    assert registry.class_names == expected
    assert registry.label_values_of("Task003_Liver") == (0, 1, 2)
    assert registry.label_values_of("Task017_AbdominalOrganSegmentation") == tuple(range(14))
