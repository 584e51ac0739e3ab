"""Predictor options, class selection and error messages."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from partialseg.data.preprocessing import Preprocessing
from partialseg.inference import Predictor
from partialseg.inference._logits import LogitSource
from partialseg.nn import SegmentationNetwork

from .conftest import CT_NORMALIZATION, TinyConvNet, make_unet
from .reference import reference_probabilities

CLASSES = ["D01/liver", "D01/spleen", "D02/liver", "D02/aorta"]


class PointwiseNet(SegmentationNetwork):
    """Logits computed voxel by voxel, so mirroring the input mirrors the output exactly."""

    def __init__(self, class_names):
        super().__init__(
            architecture="pointwise", model_args={}, class_names=class_names, deep_supervision=False
        )
        self.out = nn.Conv3d(1, len(class_names), 1)
        with torch.no_grad():
            self.out.weight.copy_(torch.linspace(-4.0, 4.0, len(class_names)).view(-1, 1, 1, 1, 1))
            self.out.bias.zero_()

    def forward(self, x):
        return self.out(x)


def mask_arrays(masks):
    return {name: sitk.GetArrayFromImage(image) for name, image in masks.items()}


@pytest.fixture(scope="module")
def ct(small_ct):
    """A 64 x 48 x 30 voxel crop of the real abdominal CT (3 mm)."""
    return small_ct[30:94, 30:78, :]


@pytest.fixture
def predictor(unet):
    return Predictor(unet, progress=False)


def test_masks_keep_input_geometry(predictor, ct):
    masks = predictor.predict(ct)
    assert list(masks) == CLASSES
    for mask in masks.values():
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert mask.GetSize() == ct.GetSize()
        assert mask.GetSpacing() == ct.GetSpacing()
        assert mask.GetOrigin() == ct.GetOrigin()
        assert mask.GetDirection() == ct.GetDirection()


def test_probabilities_are_float16(predictor, ct):
    masks, probabilities = predictor.predict(ct, return_probabilities=True)
    for name in CLASSES:
        assert probabilities[name].dtype == np.float16
        assert probabilities[name].shape == ct.GetSize()[::-1]
        expected = (probabilities[name] >= 0.5).astype(np.uint8)
        assert np.mean(expected == sitk.GetArrayFromImage(masks[name])) > 0.999


def test_array_input_matches_image_input(predictor, ct):
    array = sitk.GetArrayFromImage(ct)
    from_array = mask_arrays(predictor.predict(array, spacing=ct.GetSpacing()[::-1]))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(ct.GetSpacing())
    from_image = mask_arrays(predictor.predict(image))
    for name in CLASSES:
        assert np.array_equal(from_array[name], from_image[name]), name


def test_image_smaller_than_patch(unet):
    array = np.full((5, 20, 9), -1000, np.int16)
    array[1:4, 5:15, 2:7] = 60
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 2.0, 2.5))
    masks, probabilities = Predictor(unet, progress=False).predict(image, return_probabilities=True)
    reference = reference_probabilities(unet, image)
    for name in CLASSES:
        assert masks[name].GetSize() == (9, 20, 5)
        difference = np.abs(probabilities[name].astype(np.float64) - reference[name])
        assert difference.max() < 5e-4, name


def test_subset_computes_only_selected_heads(unet, ct):
    head_calls = []
    unet.heads.register_forward_hook(lambda module, args, output: head_calls.append(1))
    masks = Predictor(unet, progress=False).predict(ct, classes=["D02/aorta", "D01/spleen"])
    assert list(masks) == ["D02/aorta", "D01/spleen"]
    assert head_calls == []

    source = LogitSource(unet, ["D02/aorta", "D01/spleen"], autocast=contextlib.nullcontext)
    window = torch.randn(1, 1, 16, 32, 32)
    with torch.inference_mode():
        chunks = list(source.chunks(window))
        full = unet(window)
    assert [(first, logits.shape[1]) for first, logits in chunks] == [(0, 2)]
    assert torch.allclose(chunks[0][1], full[:, [3, 1]], atol=1e-4)


def test_subset_matches_full_prediction(unet, ct):
    predictor = Predictor(unet, progress=False)
    full = mask_arrays(predictor.predict(ct))
    subset = mask_arrays(predictor.predict(ct, classes=["D02/aorta", "D01/spleen"]))
    assert np.array_equal(subset["D02/aorta"], full["D02/aorta"])
    assert np.array_equal(subset["D01/spleen"], full["D01/spleen"])


def test_subset_without_heads(ct):
    network = TinyConvNet(["a", "b", "c"])
    network.preprocessing = make_unet(["a"]).preprocessing
    predictor = Predictor(network, progress=False)
    full = mask_arrays(predictor.predict(ct))
    subset = mask_arrays(predictor.predict(ct, classes=["c", "a"]))
    assert list(subset) == ["c", "a"]
    assert np.array_equal(subset["c"], full["c"])
    assert np.array_equal(subset["a"], full["a"])


def test_deep_supervision_network_left_unchanged(unet, ct):
    expected = mask_arrays(Predictor(unet, progress=False).predict(ct))
    unet.deep_supervision = True
    heads = unet.heads
    received = mask_arrays(Predictor(unet, progress=False).predict(ct, classes=["D01/spleen"]))
    assert unet.deep_supervision is True
    assert unet.heads is heads
    assert unet.class_names == CLASSES
    assert np.array_equal(received["D01/spleen"], expected["D01/spleen"])


def test_mirroring_undoes_flips(ct):
    network = PointwiseNet(["a", "b", "c"])
    network.preprocessing = make_unet(["a"]).preprocessing
    # float32 sums: with float16 every one of the eight passes adds its own rounding.
    plain = Predictor(network, progress=False, accumulate_dtype=torch.float32)
    mirrored = Predictor(
        network, progress=False, mirroring=(0, 1, 2), accumulate_dtype=torch.float32
    )
    _, expected = plain.predict(ct, return_probabilities=True)
    _, received = mirrored.predict(ct, return_probabilities=True)
    for name in ["a", "b", "c"]:
        difference = np.abs(received[name].astype(np.float32) - expected[name].astype(np.float32))
        assert difference.max() < 1e-3, name


def test_mirroring_runs_every_combination(unet, ct):
    calls = []
    unet.register_forward_hook(lambda module, args, output: calls.append(1))
    Predictor(unet, progress=False).predict(ct)
    windows = len(calls)
    calls.clear()
    Predictor(unet, progress=False, mirroring=(1, 2)).predict(ct)
    assert len(calls) == 4 * windows


def test_bf16_autocast_agrees(unet, ct):
    expected = mask_arrays(Predictor(unet, progress=False).predict(ct))
    received = mask_arrays(Predictor(unet, progress=False, precision="bf16").predict(ct))
    for name in CLASSES:
        assert np.mean(received[name] == expected[name]) > 0.99, name


def test_batches_give_same_masks(unet, ct):
    _, expected = Predictor(unet, progress=False).predict(ct, return_probabilities=True)
    _, received = Predictor(unet, progress=False, batch_size=3).predict(
        ct, return_probabilities=True
    )
    for name in CLASSES:
        difference = np.abs(received[name].astype(np.float32) - expected[name].astype(np.float32))
        assert difference.max() < 1e-3, name


def test_progress_bar_switch(unet, ct, capsys):
    Predictor(unet, progress=False).predict(ct)
    assert capsys.readouterr().err == ""
    Predictor(unet, progress=True).predict(ct)
    assert "window" in capsys.readouterr().err


def test_missing_preprocessing_rejected(unet, ct):
    unet.preprocessing = None
    with pytest.raises(ValueError, match="has no preprocessing"):
        Predictor(unet, progress=False).predict(ct)


def test_unknown_class_suggests_closest(predictor, ct):
    with pytest.raises(ValueError, match="did you mean 'D01/spleen'"):
        predictor.predict(ct, classes=["D01/spleeen"])


def test_class_string_rejected(predictor, ct):
    with pytest.raises(TypeError, match=r"use classes=\['D01/liver'\]"):
        predictor.predict(ct, classes="D01/liver")


@pytest.mark.parametrize(
    ("classes", "message"),
    [([], "classes is empty"), (["D01/liver", "D01/liver"], "duplicate names")],
    ids=["empty", "duplicate"],
)
def test_invalid_class_lists_rejected(predictor, ct, classes, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(ct, classes=classes)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"step_size": 0.0}, "step_size must be in"),
        ({"step_size": 1.5}, "step_size must be in"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"mirroring": (3,)}, "mirroring must list distinct array axes"),
        ({"mirroring": (0, 0)}, "mirroring must list distinct array axes"),
        ({"precision": "fp8"}, "precision must be 'bf16', 'fp16' or None"),
        ({"accumulate_dtype": torch.float64}, "accumulate_dtype must be"),
        ({"device": "gpu0"}, "device must be a torch device such as 'cpu'"),
    ],
    ids=["step-zero", "step-large", "batch", "axis", "axis-twice", "precision", "dtype", "device"],
)
def test_invalid_options_rejected(unet, options, message):
    with pytest.raises(ValueError, match=message):
        Predictor(unet, **options)


def test_non_network_rejected():
    with pytest.raises(TypeError, match="must be a SegmentationNetwork"):
        Predictor("model.safetensors")


def test_unknown_postprocessing_rejected(predictor, ct):
    with pytest.raises(ValueError, match="did you mean 'largest_component'"):
        predictor.predict(ct, postprocess=["largest-component"])


def test_network_preprocessing_spacing_used():
    network = TinyConvNet(["a"])
    network.preprocessing = Preprocessing(
        spacing=(2.0, 2.0, 2.0), patch_size=(8, 8, 8), **CT_NORMALIZATION
    )
    masks = Predictor(network, progress=False).predict(
        np.zeros((10, 12, 14), np.int16), spacing=(1.0, 1.0, 1.0)
    )
    assert masks["a"].GetSize() == (14, 12, 10)


def test_heads_run_in_class_chunks(ct):
    names = [f"D01/class_{i}" for i in range(20)]
    network = make_unet(names)
    source = LogitSource(network, names, autocast=contextlib.nullcontext)
    window = torch.randn(1, 1, 16, 32, 32)
    with torch.inference_mode():
        chunks = list(source.chunks(window))
        full = network(window)
    assert [(first, logits.shape[1]) for first, logits in chunks] == [(0, 8), (8, 8), (16, 4)]
    assert torch.allclose(torch.cat([logits for _, logits in chunks], dim=1), full, atol=1e-4)

    forward_outputs = []
    network.register_forward_hook(lambda module, args, output: forward_outputs.append(output))
    Predictor(network, progress=False).predict(ct)
    # The network's forward pass returns only the 4 decoder feature channels.
    assert forward_outputs
    assert {output.shape[1] for output in forward_outputs} == {4}


def test_changed_heads_output_falls_back(unet, ct, caplog):
    expected = mask_arrays(Predictor(unet, progress=False).predict(ct))
    # A forward that scales the heads' output returns a new tensor, so the
    # predictor cannot apply the heads to the decoder features by itself.
    forward = type(unet).forward
    unet.forward = lambda x: forward(unet, x) * 1.0
    with caplog.at_level("WARNING", logger="partialseg.inference._logits"):
        received = mask_arrays(Predictor(unet, progress=False).predict(ct))
    assert "cannot run separately" in caplog.text
    for name in CLASSES:
        assert np.array_equal(received[name], expected[name]), name


def test_fp16_on_cpu_warns(unet):
    with pytest.warns(UserWarning, match="use precision='bf16' there"):
        Predictor(unet, precision="fp16", progress=False)


def test_iter_masks_equals_predict(unet, ct):
    options = {"classes": ["D02/aorta", "D01/spleen"], "postprocess": "largest_component"}
    predictor = Predictor(unet, progress=False)
    expected = mask_arrays(predictor.predict(ct, **options))
    received = {
        name: sitk.GetArrayFromImage(mask) for name, mask in predictor.iter_masks(ct, **options)
    }
    assert list(received) == ["D02/aorta", "D01/spleen"]
    for name in received:
        assert np.array_equal(received[name], expected[name]), name


def test_iter_masks_checks_classes_before_iterating(unet, ct):
    with pytest.raises(ValueError, match="unknown class name"):
        Predictor(unet, progress=False).iter_masks(ct, classes=["D09/nothing"])


def test_dense_windows_logged(unet, ct, caplog):
    with caplog.at_level("WARNING", logger="partialseg.inference.predictor"):
        Predictor(unet, progress=False, step_size=0.1).predict(ct)
    assert "step_size=0.1 places" in caplog.text
    assert "times as many as step_size=0.5" in caplog.text


def test_usual_windows_not_logged(unet, ct, caplog):
    with caplog.at_level("WARNING", logger="partialseg.inference.predictor"):
        Predictor(unet, progress=False, step_size=0.25).predict(ct)
    assert caplog.text == ""
