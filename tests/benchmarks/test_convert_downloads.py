"""Conversion of synthetic downloads in each published layout into partialseg dataset folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from benchmarks.multitalent13 import convert_downloads
from benchmarks.multitalent13.collection import load_collection
from benchmarks.multitalent13.convert_downloads import (
    convert_dataset,
    find_cases,
    validate_dataset,
)

from partialseg.data.io import GeometryMismatchError
from partialseg.data.nnunet import read_raw_dataset
from partialseg.training import build_registry

from .volumes import ORIGIN, SPACING, ct_array, label_array, write_pair, write_volume

COLLECTION = load_collection()


def convert(dataset_id: str, source: Path | None, output: Path, **layout) -> Path:
    spec = COLLECTION.get(dataset_id)
    cases = find_cases(spec, source, **layout)
    return convert_dataset(spec, cases, output, progress=False)


def converted_cases(folder: Path) -> list[str]:
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (folder / "imagesTr").iterdir())


def label_values(path: Path) -> list[int]:
    return np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).tolist()


def write_msd_task(root: Path, prefix: str, values: list[int], *, with_json: bool = True) -> Path:
    training = []
    for index in range(2):
        name = f"{prefix}_{index}.nii.gz"
        write_pair(root / "imagesTr" / name, root / "labelsTr" / name, values, seed=index)
        # The MSD archives ship a macOS resource fork beside every file.
        (root / "imagesTr" / f"._{name}").write_bytes(b"\0")
        (root / "labelsTr" / f"._{name}").write_bytes(b"\0")
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    write_volume(root / "imagesTs" / f"{prefix}_9.nii.gz", ct_array(9))
    if with_json:
        metadata = {"name": prefix, "labels": {"0": "background"}, "training": training}
        (root / "dataset.json").write_text(json.dumps(metadata))
    return root


def test_msd_nested_liver(tmp_path):
    source = write_msd_task(tmp_path / "Task03_Liver", "liver", [1, 2])
    folder = convert("Task003_Liver", source, tmp_path / "out")

    assert folder == tmp_path / "out" / "Task003_Liver"
    assert converted_cases(folder) == ["liver_0", "liver_1"]
    metadata = json.loads((folder / "dataset.json").read_text())
    assert metadata["labels"] == {"background": 0, "03_liver": [1, 2], "03_cancer": 2}
    assert metadata["regions_class_order"] == [1, 2]
    assert metadata["numTraining"] == 2
    assert label_values(folder / "labelsTr" / "liver_0.nii.gz") == [0, 1, 2]


def test_msd_image_copied_unchanged(tmp_path):
    source = write_msd_task(tmp_path / "Task09_Spleen", "spleen", [1])
    folder = convert("Task009_Spleen", source, tmp_path / "out")

    original = (source / "imagesTr" / "spleen_0.nii.gz").read_bytes()
    assert (folder / "imagesTr" / "spleen_0_0000.nii.gz").read_bytes() == original
    label = sitk.ReadImage(str(folder / "labelsTr" / "spleen_0.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8
    assert label.GetSpacing() == pytest.approx(SPACING)
    assert label.GetOrigin() == pytest.approx(ORIGIN)


def test_msd_without_dataset_json(tmp_path):
    source = write_msd_task(tmp_path / "Task06_Lung", "lung", [1], with_json=False)
    folder = convert("Task006_Lung", source, tmp_path / "out")
    assert converted_cases(folder) == ["lung_0", "lung_1"]


def test_converted_folder_trains_registry(tmp_path):
    source = write_msd_task(tmp_path / "Task07_Pancreas", "pancreas", [1, 2])
    folder = convert("Task007_Pancreas", source, tmp_path / "out")

    registry = build_registry([read_raw_dataset(folder)])
    assert registry.class_names == [
        "Task007_Pancreas/07_pancreas",
        "Task007_Pancreas/07_pancreas_cancer",
    ]
    targets = registry.encode_targets(np.array([0, 1, 2]), "Task007_Pancreas")
    assert targets.tolist() == [[0, 1, 1], [0, 0, 1]]


def test_btcv_layout(tmp_path):
    root = tmp_path / "Abdomen"
    for case in ("0001", "0002"):
        write_pair(
            root / "RawData" / "Training" / "img" / f"img{case}.nii.gz",
            root / "RawData" / "Training" / "label" / f"label{case}.nii.gz",
            [1, 6, 13],
        )
    write_volume(root / "RawData" / "Testing" / "img" / "img0061.nii.gz", ct_array())
    folder = convert("Task017_AbdominalOrganSegmentation", root, tmp_path / "out")

    assert converted_cases(folder) == ["btcv_0001", "btcv_0002"]
    assert label_values(folder / "labelsTr" / "btcv_0001.nii.gz") == [0, 1, 6, 13]
    assert validate_dataset(folder, COLLECTION.get("17")) == [
        "warning: 2 cases converted, the public release has 30 labelled training cases"
    ]


def test_kits19_layout_skips_unlabelled_cases(tmp_path):
    root = tmp_path / "kits19" / "data"
    for case in ("00000", "00001"):
        write_pair(
            root / f"case_{case}" / "imaging.nii.gz",
            root / f"case_{case}" / "segmentation.nii.gz",
            [1, 2],
        )
    write_volume(root / "case_00210" / "imaging.nii.gz", ct_array())
    folder = convert("Task064_KiTS_labelsFixed", root, tmp_path / "out")

    assert converted_cases(folder) == ["case_00000", "case_00001"]
    metadata = json.loads((folder / "dataset.json").read_text())
    assert metadata["labels"]["64_both_kidneys"] == [1, 2]


def test_segthor_layout(tmp_path):
    root = tmp_path / "SegTHOR"
    for case in ("Patient_01", "Patient_02"):
        write_pair(
            root / "train" / case / f"{case}.nii.gz",
            root / "train" / case / "GT.nii.gz",
            [1, 2, 3, 4],
        )
    write_volume(root / "test" / "Patient_41.nii.gz", ct_array())
    folder = convert("Task055_SegTHOR", root, tmp_path / "out")
    assert converted_cases(folder) == ["Patient_01", "Patient_02"]


def test_structseg_layout_warns_unverified(tmp_path, caplog):
    root = tmp_path / "Thoracic_OAR"
    for case in ("1", "2"):
        write_pair(root / case / "data.nii.gz", root / case / "label.nii.gz", [1, 5, 6])
    folder = convert("Task051_StructSeg2019_Task3_Thoracic_OAR", root, tmp_path / "out")

    assert converted_cases(folder) == ["structseg_1", "structseg_2"]
    assert "not checked against the archive" in caplog.text


def test_btcv_cervix_layout(tmp_path):
    root = tmp_path / "Cervix" / "RawData" / "Training"
    for case in ("0507688", "0522c01"):
        write_pair(
            root / "img" / f"{case}-Image.nii.gz",
            root / "label" / f"{case}-Mask.nii.gz",
            [1, 2, 3, 4],
        )
    folder = convert("Task018_PelvicOrganSegmentation", tmp_path / "Cervix", tmp_path / "out")
    assert converted_cases(folder) == ["cervix_0507688", "cervix_0522c01"]


def test_pattern_override(tmp_path):
    root = tmp_path / "Thoracic"
    write_pair(root / "scans" / "p7.nii.gz", root / "masks" / "p7_mask.nii.gz", [2])
    folder = convert(
        "Task051_StructSeg2019_Task3_Thoracic_OAR",
        root,
        tmp_path / "out",
        image_pattern="scans/{case}.nii.gz",
        label_pattern="masks/{case}_mask.nii.gz",
    )
    assert converted_cases(folder) == ["structseg_p7"]


def write_dicom_series(folder: Path, array: np.ndarray) -> None:
    """Write a (z, y, x) int16 array as one DICOM file per slice with the test geometry."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(array.shape[0]):
        slice_image = sitk.GetImageFromArray(array[z : z + 1])
        position = (ORIGIN[0], ORIGIN[1], ORIGIN[2] + z * SPACING[2])
        slice_image.SetSpacing(SPACING)
        slice_image.SetOrigin(position)
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.1",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{SPACING[1]}\\{SPACING[0]}",
            "0018|0050": str(SPACING[2]),
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"1-{z + 1:03d}.dcm"))
        writer.Execute(slice_image)


def test_nih_pancreas_dicom_series(tmp_path):
    root = tmp_path / "Pancreas-CT"
    series = root / "Pancreas-CT" / "PANCREAS_0001" / "11-24-2015-PANCREAS0001" / "Pancreas-99667"
    write_dicom_series(series, ct_array())
    write_volume(root / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz", label_array([1]))
    folder = convert("Task062_NIHPancreas", root, tmp_path / "out")

    assert converted_cases(folder) == ["pancreas_0001"]
    image = sitk.ReadImage(str(folder / "imagesTr" / "pancreas_0001_0000.nii.gz"))
    assert image.GetSize() == (5, 6, 4)
    assert image.GetSpacing() == pytest.approx(SPACING, abs=1e-3)
    assert sitk.GetArrayFromImage(image).tolist() == ct_array().tolist()


def test_amos_keeps_ct_cases(tmp_path):
    root = tmp_path / "amos22"
    write_pair(
        root / "imagesTr" / "amos_0001.nii.gz", root / "labelsTr" / "amos_0001.nii.gz", [1, 15]
    )
    write_pair(root / "imagesTr" / "amos_0540.nii.gz", root / "labelsTr" / "amos_0540.nii.gz", [1])
    write_pair(root / "imagesVa" / "amos_0008.nii.gz", root / "labelsVa" / "amos_0008.nii.gz", [13])
    folder = convert("Task218_AMOS2022", root, tmp_path / "out")
    assert converted_cases(folder) == ["amos_0001", "amos_0008"]


def test_images_labels_pair_by_digits(tmp_path):
    for case in ("0001", "0002"):
        write_pair(
            tmp_path / "images" / f"img{case}.nii.gz",
            tmp_path / "labels" / f"label{case}.nii.gz",
            [1, 8],
        )
    folder = convert(
        "Task046_AbdOrgSegm2",
        None,
        tmp_path / "out",
        layout="images/labels",
        images=tmp_path / "images",
        labels=tmp_path / "labels",
    )
    assert converted_cases(folder) == ["0001", "0002"]
    assert validate_dataset(folder, COLLECTION.get("46")) == []


def test_images_labels_pair_by_name(tmp_path):
    write_pair(tmp_path / "images" / "ct_a_0000.nii.gz", tmp_path / "labels" / "ct_a.nii.gz", [3])
    folder = convert(
        "Task046_AbdOrgSegm2",
        None,
        tmp_path / "out",
        layout="images/labels",
        images=tmp_path / "images",
        labels=tmp_path / "labels",
    )
    assert converted_cases(folder) == ["ct_a"]


def test_dataset_without_layout_needs_fallback(tmp_path):
    with pytest.raises(ValueError, match="--layout images/labels"):
        find_cases(COLLECTION.get("Task046_AbdOrgSegm2"), tmp_path)


def test_undeclared_label_value_rejected(tmp_path):
    source = write_msd_task(tmp_path / "Task09_Spleen", "spleen", [1, 2])
    with pytest.raises(ValueError, match=r"label values \[2\] that Task009_Spleen does not"):
        convert("Task009_Spleen", source, tmp_path / "out")


def test_non_integral_label_rejected(tmp_path):
    root = tmp_path / "Task09_Spleen"
    write_volume(root / "imagesTr" / "spleen_0.nii.gz", ct_array())
    write_volume(root / "labelsTr" / "spleen_0.nii.gz", label_array([1]) * np.float32(0.5))
    with pytest.raises(ValueError, match="non-integral"):
        convert("Task009_Spleen", root, tmp_path / "out")


def test_grid_mismatch_rejected(tmp_path):
    root = tmp_path / "Task09_Spleen"
    write_volume(root / "imagesTr" / "spleen_0.nii.gz", ct_array())
    write_volume(root / "labelsTr" / "spleen_0.nii.gz", label_array([1]), spacing=(1, 1, 1))
    with pytest.raises(GeometryMismatchError):
        convert("Task009_Spleen", root, tmp_path / "out")


def test_existing_output_needs_overwrite(tmp_path):
    source = write_msd_task(tmp_path / "Task09_Spleen", "spleen", [1])
    convert("Task009_Spleen", source, tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert("Task009_Spleen", source, tmp_path / "out")


def test_validate_reports_changed_labels(tmp_path):
    source = write_msd_task(tmp_path / "Task09_Spleen", "spleen", [1])
    folder = convert("Task009_Spleen", source, tmp_path / "out")
    metadata = json.loads((folder / "dataset.json").read_text())
    metadata["labels"] = {"background": 0, "spleen": 1}
    (folder / "dataset.json").write_text(json.dumps(metadata))

    problems = validate_dataset(folder, COLLECTION.get("Task009_Spleen"))
    assert any("differ from the description" in p for p in problems)
    assert any("partialseg reads the classes" in p for p in problems)


def test_validate_reports_missing_label(tmp_path):
    source = write_msd_task(tmp_path / "Task09_Spleen", "spleen", [1])
    folder = convert("Task009_Spleen", source, tmp_path / "out")
    (folder / "labelsTr" / "spleen_1.nii.gz").unlink()
    problems = validate_dataset(folder, COLLECTION.get("Task009_Spleen"))
    assert any("spleen_1 has no label map" in p for p in problems)


def test_summary_lists_converted_datasets(tmp_path):
    convert("Task009_Spleen", write_msd_task(tmp_path / "s", "spleen", [1]), tmp_path / "out")
    convert("Task006_Lung", write_msd_task(tmp_path / "l", "lung", [1]), tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "collection.json").read_text())
    assert list(summary["datasets"]) == ["Task006_Lung", "Task009_Spleen"]
    assert summary["datasets"]["Task006_Lung"]["lesion_classes"] == ["06_lungnodule"]


def test_command_line_convert_and_validate(tmp_path, capsys):
    source = write_msd_task(tmp_path / "Task10_Colon", "colon", [1])
    output = tmp_path / "out"
    assert (
        convert_downloads.main(["convert", "10", str(source), "-o", str(output), "--no-progress"])
        == 0
    )
    assert convert_downloads.main(["validate", str(output)]) == 0
    assert "Task010_Colon: valid" in capsys.readouterr().out


def test_command_line_reports_missing_download(tmp_path, capsys):
    status = convert_downloads.main(
        ["convert", "9", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")]
    )
    assert status == 2
    assert "MSD task folder not found" in capsys.readouterr().err


def test_command_line_convert_all(tmp_path):
    write_msd_task(tmp_path / "downloads" / "Task09_Spleen", "spleen", [1])
    write_pair(
        tmp_path / "downloads" / "kits19" / "data" / "case_00000" / "imaging.nii.gz",
        tmp_path / "downloads" / "kits19" / "data" / "case_00000" / "segmentation.nii.gz",
        [1],
    )
    output = tmp_path / "out"
    assert (
        convert_downloads.main(
            ["convert-all", str(tmp_path / "downloads"), "-o", str(output), "--no-progress"]
        )
        == 0
    )
    assert sorted(p.name for p in output.iterdir()) == [
        "Task009_Spleen",
        "Task064_KiTS_labelsFixed",
        "collection.json",
    ]
