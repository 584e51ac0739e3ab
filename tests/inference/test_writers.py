"""Output folders: per-class masks, label maps, probabilities, previews and atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from partialseg.inference import (
    Predictor,
    build_label_map,
    predict_to_folder,
    safe_file_names,
    write_prediction,
)
from partialseg.inference import writers as writers_module
from partialseg.inference._preview import encode_png

from .conftest import make_unet

CLASSES = ["D01/liver", "D01/spleen", "D02/liver", "D02/aorta"]


def masks_from(arrays):
    return {name: sitk.GetImageFromArray(np.array(values, np.uint8)) for name, values in arrays}


@pytest.fixture(scope="module")
def input_folder(small_ct, tmp_path_factory):
    """An nnU-Net imagesTs folder with two real CT crops."""
    folder = tmp_path_factory.mktemp("imagesTs")
    sitk.WriteImage(small_ct[30:94, 30:78, :16], str(folder / "abdomen_a_0000.nii.gz"))
    sitk.WriteImage(small_ct[20:70, 40:90, 10:], str(folder / "abdomen_b_0000.nii.gz"))
    return folder


@pytest.fixture
def predictor():
    return Predictor(make_unet(CLASSES), progress=False)


def test_safe_names_round_trip():
    names = ["D01/liver", "D01/liver tumour", "D01/liver_tumour", ".hidden", "a/b/c"]
    stems = safe_file_names(names)
    assert stems["D01/liver"] == "D01__liver"
    assert stems["D01/liver tumour"] == "D01__liver_tumour"
    assert stems["D01/liver_tumour"] == "D01__liver_tumour_2"
    assert stems[".hidden"] == "_hidden"
    assert stems["a/b/c"] == "a__b__c"
    assert len(set(stems.values())) == len(names)


def test_label_map_overlap_raises():
    masks = masks_from([("a", [[[1, 1, 0]]]), ("b", [[[0, 1, 1]]])])
    with pytest.raises(ValueError, match=r"classes \['a', 'b'\] overlap in 1 voxels"):
        build_label_map(masks, ["a", "b"])


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("first", [1, 1, 2, 0]), ("last", [1, 2, 2, 0]), ("largest-prob", [1, 2, 2, 0])],
)
def test_label_map_policies(policy, expected):
    masks = masks_from([("a", [[[1, 1, 0, 0]]]), ("b", [[[0, 1, 1, 0]]])])
    probabilities = {
        "a": np.array([[[0.9, 0.6, 0.1, 0.0]]], np.float16),
        "b": np.array([[[0.1, 0.8, 0.9, 0.0]]], np.float16),
    }
    labels, table = build_label_map(
        masks, ["a", "b"], overlap_policy=policy, probabilities=probabilities
    )
    assert sitk.GetArrayFromImage(labels)[0, 0].tolist() == expected
    assert table == {"background": 0, "a": 1, "b": 2}


def test_label_map_largest_prob_needs_probabilities():
    masks = masks_from([("a", [[[1]]])])
    with pytest.raises(ValueError, match="needs the probabilities"):
        build_label_map(masks, ["a"], overlap_policy="largest-prob")


def test_label_map_unknown_class_suggests():
    masks = masks_from([("D01/liver", [[[1]]])])
    with pytest.raises(ValueError, match="did you mean 'D01/liver'"):
        build_label_map(masks, ["D01/livr"])


def test_png_encoder_reads_back(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    path.write_bytes(encode_png(rgb))
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (5, 7)
    assert np.array_equal(sitk.GetArrayFromImage(image), rgb)


@pytest.mark.realdata
def test_folder_with_every_format(predictor, input_folder, tmp_path):
    written = predict_to_folder(
        predictor,
        input_folder,
        tmp_path,
        formats=["masks", "labelmap", "probabilities", "probabilities_npz", "preview"],
        labelmap_classes=["D01/spleen", "D02/aorta"],
        overlap_policy="largest-prob",
    )
    assert [path.name for path in written] == ["abdomen_a", "abdomen_b"]
    case = tmp_path / "abdomen_a"
    image = sitk.ReadImage(str(input_folder / "abdomen_a_0000.nii.gz"))

    mapping = json.loads((case / "classes.json").read_text())
    assert mapping == dict(zip(safe_file_names(CLASSES).values(), CLASSES, strict=True))
    for stem in mapping:
        mask = sitk.ReadImage(str(case / f"{stem}.nii.gz"))
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert mask.GetSize() == image.GetSize()
        probability = sitk.ReadImage(str(case / "probabilities" / f"{stem}.nii.gz"))
        assert probability.GetPixelID() == sitk.sitkFloat32

    table = json.loads((case / "labelmap.json").read_text())
    assert table["labels"] == {"background": 0, "D01/spleen": 1, "D02/aorta": 2}
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "labelmap.nii.gz")))
    assert set(np.unique(labels)) <= {0, 1, 2}

    with np.load(case / "probabilities.npz") as archive:
        assert archive["D01__liver"].dtype == np.float16
        assert archive["D01__liver"].shape == image.GetSize()[::-1]
        assert np.allclose(archive["spacing_xyz"], image.GetSpacing())

    preview = sitk.ReadImage(str(case / "preview.png"))
    assert preview.GetSize() == (3 * image.GetSize()[0], image.GetSize()[1])
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]


@pytest.mark.realdata
def test_overlap_error_leaves_no_folder(predictor, input_folder, tmp_path):
    with pytest.raises(ValueError, match="overlap"):
        predict_to_folder(predictor, input_folder, tmp_path, formats=["labelmap"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.realdata
def test_failed_write_leaves_no_folder(predictor, input_folder, tmp_path, monkeypatch):
    def failing_preview(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writers_module, "render_preview", failing_preview)
    with pytest.raises(OSError, match="disk full"):
        predict_to_folder(predictor, input_folder, tmp_path, formats=["masks", "preview"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.realdata
def test_existing_case_folders(predictor, input_folder, tmp_path):
    image = input_folder / "abdomen_a_0000.nii.gz"
    (tmp_path / "abdomen_a").mkdir()
    (tmp_path / "abdomen_a" / "old.txt").touch()
    with pytest.raises(FileExistsError, match="existing='skip'"):
        predict_to_folder(predictor, image, tmp_path)

    assert predict_to_folder(predictor, image, tmp_path, existing="skip") == []
    assert (tmp_path / "abdomen_a" / "old.txt").exists()

    predict_to_folder(predictor, image, tmp_path, existing="overwrite")
    assert not (tmp_path / "abdomen_a" / "old.txt").exists()
    assert (tmp_path / "abdomen_a" / "D01__liver.nii.gz").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["abdomen_a"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"formats": ["mask"]}, "did you mean 'masks'"),
        ({"overlap_policy": "largest"}, "invalid overlap_policy"),
        ({"existing": "replace"}, "invalid existing"),
    ],
    ids=["format", "policy", "existing"],
)
def test_invalid_writer_options(predictor, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        predict_to_folder(predictor, tmp_path, tmp_path / "out", **options)


@pytest.mark.realdata
def test_failed_first_case_removes_new_output_folder(predictor, input_folder, tmp_path):
    output = tmp_path / "new" / "predictions"
    with pytest.raises(ValueError, match="overlap"):
        predict_to_folder(predictor, input_folder, output, formats=["labelmap"])
    assert not output.exists()


@pytest.mark.realdata
def test_failed_case_keeps_existing_output_folder(predictor, input_folder, tmp_path):
    with pytest.raises(ValueError, match="overlap"):
        predict_to_folder(predictor, input_folder, tmp_path, formats=["labelmap"])
    assert tmp_path.is_dir()


def test_preview_without_image_rejected(tmp_path):
    masks = masks_from([("a", [[[1, 0]]])])
    with pytest.raises(ValueError, match=r"formats \['preview'\] need the input image"):
        write_prediction(tmp_path / "case", None, masks, formats=["masks", "preview"])
    assert not (tmp_path / "case").exists()


def test_masks_without_image_written(tmp_path):
    masks = masks_from([("D01/a", [[[1, 0]]])])
    write_prediction(tmp_path / "case", None, masks, formats=["masks", "labelmap"])
    assert (tmp_path / "case" / "D01__a.nii.gz").is_file()
    assert (tmp_path / "case" / "labelmap.nii.gz").is_file()


@pytest.mark.realdata
def test_labelmap_class_not_predicted_rejected_first(predictor, input_folder, tmp_path):
    calls = []
    predictor.network.register_forward_hook(lambda module, args, output: calls.append(1))
    with pytest.raises(ValueError, match=r"'D02/aorta' is not among the predicted classes"):
        predict_to_folder(
            predictor,
            input_folder,
            tmp_path / "out",
            classes=["D01/liver"],
            formats=["labelmap"],
            labelmap_classes=["D02/aorta"],
        )
    assert calls == []
    assert not (tmp_path / "out").exists()


def test_unknown_labelmap_class_suggests(predictor, tmp_path):
    (tmp_path / "ct.nii.gz").touch()
    with pytest.raises(ValueError, match="did you mean 'D01/spleen'"):
        predict_to_folder(
            predictor,
            tmp_path / "ct.nii.gz",
            tmp_path / "out",
            formats=["labelmap"],
            labelmap_classes=["D01/spleeen"],
        )


@pytest.mark.realdata
def test_output_folder_is_file_rejected(predictor, input_folder, tmp_path):
    output = tmp_path / "predictions"
    output.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file; pass the path of a folder"):
        predict_to_folder(predictor, input_folder, output)
    with pytest.raises(OSError, match="cannot create output folder"):
        predict_to_folder(predictor, input_folder, output / "sub")


@pytest.mark.realdata
def test_overwrite_replaces_file_at_case_path(predictor, input_folder, tmp_path):
    image = input_folder / "abdomen_a_0000.nii.gz"
    (tmp_path / "abdomen_a").write_text("old")
    predict_to_folder(predictor, image, tmp_path, existing="overwrite")
    assert (tmp_path / "abdomen_a" / "D01__liver.nii.gz").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["abdomen_a"]


@pytest.mark.realdata
def test_failed_case_logs_progress_and_keeps_written(
    predictor, input_folder, tmp_path, caplog, monkeypatch
):
    original = writers_module._write_mask_files

    def fail_on_second(folder, *args, **kwargs):
        if "abdomen_b" in str(folder):
            raise OSError("disk full")
        return original(folder, *args, **kwargs)

    monkeypatch.setattr(writers_module, "_write_mask_files", fail_on_second)
    with (
        caplog.at_level("ERROR", logger="partialseg.inference.writers"),
        pytest.raises(OSError, match="disk full"),
    ):
        predict_to_folder(predictor, input_folder, tmp_path)
    assert "case abdomen_b (2 of 2) failed; 1 case folder(s) were written" in caplog.text
    assert "--existing skip" in caplog.text
    assert sorted(path.name for path in tmp_path.iterdir()) == ["abdomen_a"]
