"""The ``partialseg predict`` command: its options reach the predictor and the writers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from partialseg.cli import main
from partialseg.cli.main import build_parser
from partialseg.hub import from_pretrained, save_pretrained
from partialseg.inference import Predictor

from .conftest import make_unet

pytestmark = pytest.mark.realdata

CLASSES = ["D01/liver", "D01/spleen", "D02/liver", "D02/aorta"]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    save_pretrained(make_unet(CLASSES, head_bias=False), folder, model_card=False)
    return folder


@pytest.fixture(scope="module")
def image_path(small_ct, tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "abdomen.nii.gz"
    sitk.WriteImage(small_ct[30:94, 30:78, :16], str(path))
    return path


def predict(image_path, output, model_folder, *options):
    command = ["predict", "-i", str(image_path), "-o", str(output), "-m", str(model_folder)]
    return main([*command, "--device", "cpu", "--no-progress", *options])


@pytest.mark.parametrize(
    ("options", "axes"),
    [([], None), (["--mirroring"], []), (["--mirroring", "1", "2"], [1, 2])],
    ids=["absent", "all-axes", "chosen-axes"],
)
def test_mirroring_option_parses(options, axes):
    args = build_parser().parse_args(["predict", "-i", "x", "-o", "y", "-m", "z", *options])
    assert args.mirroring == axes


def test_invalid_mirroring_axis_rejected(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "-i", "x", "-o", "y", "-m", "z", "--mirroring", "3"])
    assert "invalid choice: 3" in capsys.readouterr().err


def test_options_match_python_api(model_folder, image_path, tmp_path):
    options = ["--mirroring", "2", "--batch-size", "2", "--accumulate-dtype", "float32"]
    assert predict(image_path, tmp_path, model_folder, *options) == 0

    predictor = Predictor(
        from_pretrained(model_folder),
        mirroring=(2,),
        batch_size=2,
        accumulate_dtype=torch.float32,
        progress=False,
    )
    expected = predictor.predict(image_path)
    predictor.mirror_axes = [()]
    unmirrored = predictor.predict(image_path)
    # The comparison can only catch an ignored option if the option changes the masks.
    assert any(
        not np.array_equal(
            sitk.GetArrayFromImage(expected[n]), sitk.GetArrayFromImage(unmirrored[n])
        )
        for n in CLASSES
    )
    case = tmp_path / "abdomen"
    stems = json.loads((case / "classes.json").read_text())
    assert sorted(stems.values()) == sorted(CLASSES)
    for stem, class_name in stems.items():
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{stem}.nii.gz")))
        assert np.array_equal(written, sitk.GetArrayFromImage(expected[class_name])), class_name


def test_labelmap_classes_and_overlap_policy(model_folder, image_path, tmp_path):
    status = predict(
        image_path,
        tmp_path,
        model_folder,
        "--formats",
        "labelmap",
        "--labelmap-classes",
        "D01/spleen",
        "D02/aorta",
        "--overlap-policy",
        "last",
    )
    assert status == 0
    table = json.loads((tmp_path / "abdomen" / "labelmap.json").read_text())
    assert table["overlap_policy"] == "last"
    assert table["labels"] == {"background": 0, "D01/spleen": 1, "D02/aorta": 2}
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "abdomen" / "labelmap.nii.gz")))
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}


def test_overlap_error_names_command_line_options(model_folder, image_path, tmp_path, capsys):
    output = tmp_path / "predictions"
    assert predict(image_path, output, model_folder, "--formats", "labelmap") == 2
    error = capsys.readouterr().err
    assert "--overlap-policy" in error
    assert "--labelmap-classes" in error
    assert not output.exists()


def test_invalid_precision_rejected(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["predict", "-i", "x", "-o", "y", "-m", "z", "--precision", "fp8"]
        )
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options", [["--labelmap-classes", "D01/liver"], ["--overlap-policy", "last"]]
)
def test_labelmap_options_need_labelmap_format(model_folder, image_path, tmp_path, capsys, options):
    assert predict(image_path, tmp_path / "out", model_folder, *options) == 2
    assert "apply to the label map only; add --formats labelmap" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--step-size", "0"], "expected a number in (0, 1], got '0'"),
        (["--step-size", "1.5"], "expected a number in (0, 1], got '1.5'"),
        (["--step-size", "abc"], "expected a number in (0, 1], got 'abc'"),
        (["--batch-size", "0"], "expected a whole number of at least 1, got '0'"),
    ],
    ids=["step-zero", "step-large", "step-text", "batch-zero"],
)
def test_invalid_window_options_name_flag(capsys, options, message):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "-i", "x", "-o", "y", "-m", "z", *options])
    error = capsys.readouterr().err
    assert message in error
    assert options[0] in error


def test_interrupt_exits_130_without_traceback(monkeypatch, capsys):
    from partialseg.cli import commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run_predict", interrupted)
    assert main(["predict", "-i", "x", "-o", "y", "-m", "z"]) == 130
    error = capsys.readouterr().err
    assert "partialseg predict: interrupted" in error
    assert "Traceback" not in error


def test_sigterm_removes_new_output_folder(model_folder, small_ct, tmp_path):
    # A 1.5 mm network grid makes the prediction take seconds, long enough to
    # terminate it after the output folder is made and before the case is written.
    network = from_pretrained(model_folder)
    network.preprocessing.spacing = (1.5, 1.5, 1.5)
    slow_model = tmp_path / "slow_model"
    save_pretrained(network, slow_model, model_card=False)
    image = tmp_path / "ct.nii.gz"
    sitk.WriteImage(small_ct, str(image))
    output = tmp_path / "predictions"
    command = [sys.executable, "-m", "partialseg", "predict", "-i", str(image)]
    command += ["-o", str(output), "-m", str(slow_model), "--device", "cpu", "--no-progress"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not output.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the prediction never started"
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, error
    assert not output.exists()
