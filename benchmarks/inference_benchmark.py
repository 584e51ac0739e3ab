"""Benchmark whole-volume prediction: partialseg's streaming Predictor against MONAI and nnU-Net.

Every arm predicts the same image with the same randomly initialised plain
U-Net (heads with biases spread from -4 to 4, so some classes cover much of the
image and some little), the same patch, the same 50 % window overlap and the
same Gaussian weighting (sigma = patch / 8), without mirroring, and returns one
uint8 mask per class on the input grid:

- ``partialseg``: ``Predictor()`` with its default float16 accumulator.
- ``partialseg-fp32``: the same with a float32 accumulator.
- ``partialseg-files``: ``predict_to_folder`` as ``partialseg predict`` runs
  it, from an uncompressed NIfTI copy of the input to one ``.nii.gz`` mask file
  per class. It writes each mask as it is unpacked, so it never keeps all of
  them; its time includes reading the input and compressing the mask files.
- ``monai``: the same resampling and normalisation, then MONAI's
  ``sliding_window_inference`` (stitching on the CPU), an in-place sigmoid, and
  per class a linear SimpleITK resampling onto the input grid (nearest-value
  extrapolation at the border, as partialseg does) and a threshold.
- ``nnunet``: ``nnUNetPredictor`` initialised by hand (``manual_initialization``
  with a plans dict and dataset.json built here) and
  ``predict_single_npy_array``. nnU-Net returns one label map, not one mask per
  class: every class is a region and later classes overwrite earlier ones where
  they overlap. Its own preprocessing crops to the non-zero region and resamples
  the image (linear here) before normalising.

Every arm runs in its own subprocess, so its peak resident set size
(``ru_maxrss``) is its own. The baseline is the resident size after imports, the
network and the image are loaded, and the increment is the peak minus it. Each
arm reports wall-clock seconds and CPU seconds (user + system) of the
prediction. On a shared machine the CPU seconds vary less than the wall time.

The final table adds, per arm, the memory each class adds: the peak minus the
same arm's 1-class peak, divided by the number of added classes and by the size
of one uint8 mask of the input. Agreement is the fraction of (class, voxel)
pairs whose mask value equals that of the ``partialseg`` arm with the same
number of classes (which must come earlier in ``--arms``). For nnU-Net it is
the fraction of voxels whose label equals the label map built from the
``partialseg`` masks with nnU-Net's rule (later classes overwrite earlier ones).

Usage::

    python benchmarks/inference_benchmark.py --classes 1 8 47 --arms partialseg monai
    python benchmarks/inference_benchmark.py --synthetic --classes 47
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root

ARMS = ("partialseg", "partialseg-fp32", "partialseg-files", "monai", "nnunet")
FEATURES = [4, 8, 16, 32]
STRIDES = [1, 2, 2, 2]
SPACING = (1.5, 1.0, 1.0)
PATCH = (96, 192, 192)
CT_CLIP = (-1000.0, 1000.0)
CT_MEAN, CT_STD = 0.0, 400.0


def build_network(
    num_classes: int, *, patch=PATCH, features=FEATURES, spacing=SPACING, seed: int = 0
):
    """Return the benchmark network: a small plain U-Net with biased per-class heads."""
    from partialseg.data.preprocessing import Preprocessing
    from partialseg.nn import ClassHeads, create_model

    torch.manual_seed(seed)
    names = [f"D{i // 8:02d}/class_{i}" for i in range(num_classes)]
    network = create_model(
        "plain_unet",
        classes=names,
        features_per_stage=list(features),
        strides=STRIDES[: len(features)],
        deep_supervision=False,
    )
    heads = ClassHeads(network.heads.in_channels, names, bias=True)
    with torch.no_grad():
        for weight in heads.weight:
            weight.mul_(4.0)
        for bias in heads.bias:
            bias.copy_(torch.linspace(-4.0, 4.0, num_classes))
    network.heads = heads
    network.preprocessing = Preprocessing(
        spacing=tuple(spacing), patch_size=patch, ct_clip=CT_CLIP, ct_mean=CT_MEAN, ct_std=CT_STD
    )
    return network.eval()


def synthetic_ct(size_xyz=(512, 512, 300), spacing_xyz=(0.8, 0.8, 1.5)) -> sitk.Image:
    """Return an int16 CT-like phantom: air, an elliptic body, two lungs and a spine."""
    nx, ny, nz = size_xyz
    z, y, x = np.ogrid[:nz, :ny, :nx]
    u, v = (x - nx / 2) / (nx * 0.42), (y - ny / 2) / (ny * 0.32)
    array = np.full((nz, ny, nx), -1000, np.int16)
    array[np.broadcast_to(u**2 + v**2 < 1, array.shape)] = 40
    for side in (-1, 1):
        lung = ((x - nx / 2 - side * nx * 0.18) / (nx * 0.13)) ** 2 + (
            (y - ny / 2) / (ny * 0.2)
        ) ** 2
        array[np.broadcast_to((lung < 1) & (z > nz * 0.4), array.shape)] = -800
    spine = ((x - nx / 2) / (nx * 0.05)) ** 2 + ((y - ny * 0.72) / (ny * 0.05)) ** 2 < 1
    array[np.broadcast_to(spine, array.shape)] = 400
    noise = np.random.default_rng(0).normal(0, 20, array.shape[1:]).astype(np.int16)
    array += noise
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    return image


def load_input(synthetic: bool) -> sitk.Image:
    if synthetic:
        return synthetic_ct()
    return sitk.ReadImage(str(data_root() / "radiomics_lung" / "lung1_image.nrrd"))


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_partialseg(network, image, *, accumulate_dtype):
    from partialseg.inference import Predictor

    predictor = Predictor(network, progress=False, accumulate_dtype=accumulate_dtype)
    return predictor.predict(image)


def run_monai(network, image):
    from monai.inferers import sliding_window_inference

    from partialseg.inference import preprocess_image

    volume, grid = preprocess_image(image, network.preprocessing)
    with torch.inference_mode():
        output = sliding_window_inference(
            torch.from_numpy(volume)[None, None],
            roi_size=network.preprocessing.patch_size,
            sw_batch_size=1,
            predictor=network,
            overlap=0.5,
            mode="gaussian",
            sigma_scale=0.125,
            sw_device="cpu",
            device="cpu",
        )
        probabilities = output[0].sigmoid_().numpy()
    del volume
    masks = []
    for channel in probabilities:
        probability = sitk.GetImageFromArray(channel)
        probability.CopyInformation(grid)
        # Input voxels beyond the outermost network voxel centres take the
        # nearest value, as in partialseg, instead of the default 0.
        back = sitk.Resample(
            probability, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True
        )
        masks.append(sitk.GetArrayFromImage(back >= 0.5))
    return masks


def nnunet_plans(network, image: sitk.Image) -> tuple[dict, dict]:
    """Build the plans and dataset.json that nnU-Net needs, matching the network's preprocessing."""
    resampling = {"is_seg": False, "order": 1, "order_z": 1, "force_separate_z": None}
    plans = {
        "dataset_name": "Dataset999_Benchmark",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(network.preprocessing.spacing),
        "original_median_shape_after_transp": list(image.GetSize()[::-1]),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": CT_CLIP[1],
                "min": CT_CLIP[0],
                "mean": CT_MEAN,
                "median": CT_MEAN,
                "std": CT_STD,
                "percentile_00_5": CT_CLIP[0],
                "percentile_99_5": CT_CLIP[1],
            }
        },
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 1,
                "patch_size": list(network.preprocessing.patch_size),
                "median_image_size_in_voxels": list(image.GetSize()[::-1]),
                "spacing": list(network.preprocessing.spacing),
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
                "resampling_fn_probabilities_kwargs": resampling,
                "architecture": {
                    "network_class_name": "partialseg.nn.PlainUNet",
                    "arch_kwargs": {},
                    "_kw_requires_import": [],
                },
                "batch_dice": False,
            }
        },
    }
    # nnU-Net switches to regions (sigmoid outputs) only when some region
    # merges several label values, so the first region also lists an unused one.
    num_classes = network.num_classes
    labels = {"background": 0, **{f"class_{i}": [i + 1] for i in range(num_classes)}}
    labels["class_0"] = [1, num_classes + 1]
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "regions_class_order": list(range(1, num_classes + 1)),
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    return plans, dataset


def run_nnunet(network, image):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dataset = nnunet_plans(network, image)
    plans_manager = PlansManager(plans)
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans_manager,
        plans_manager.get_configuration("3d_fullres"),
        [network.state_dict()],
        dataset,
        "nnUNetTrainer",
        None,
    )
    array = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    label_map = predictor.predict_single_npy_array(
        array, {"spacing": list(image.GetSpacing()[::-1])}
    )
    return [np.asarray(label_map)]


def run_partialseg_files(network, path: Path, output: Path) -> list[np.ndarray]:
    """Predict as ``partialseg predict`` does and return the written masks, read lazily."""
    from partialseg.inference import Predictor, predict_to_folder

    predictor = Predictor(network, progress=False)
    (case,) = predict_to_folder(predictor, path, output)
    return [case / f"{stem}.nii.gz" for stem in json.loads((case / "classes.json").read_text())]


class _MaskFiles:
    """Masks read back from files one at a time, so reading adds no peak memory."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __iter__(self):
        for path in self.paths:
            yield sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    def __getitem__(self, index: int) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(self.paths[index])))


def worker(arguments: argparse.Namespace) -> None:
    torch.set_num_threads(arguments.threads)
    image = load_input(arguments.synthetic)
    network = build_network(
        arguments.num_classes,
        patch=tuple(arguments.patch),
        features=arguments.features,
        spacing=arguments.spacing,
    )
    scratch = Path(tempfile.mkdtemp(prefix="partialseg-benchmark-"))
    if arguments.worker == "partialseg-files":
        # Uncompressed NIfTI, so reading the input costs little of the timed part.
        input_path = scratch / "ct.nii"
        sitk.WriteImage(image, str(input_path), False)
        del image

    baseline = current_rss()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if arguments.worker == "partialseg-files":
        paths = run_partialseg_files(network, input_path, scratch / "predictions")
    elif arguments.worker == "partialseg":
        images = run_partialseg(network, image, accumulate_dtype=torch.float16)
    elif arguments.worker == "partialseg-fp32":
        images = run_partialseg(network, image, accumulate_dtype=torch.float32)
    elif arguments.worker == "monai":
        masks = run_monai(network, image)
    else:
        masks = run_nnunet(network, image)
    seconds = time.perf_counter() - start
    end_usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = sum(getattr(end_usage, f) - getattr(usage, f) for f in ("ru_utime", "ru_stime"))
    peak = end_usage.ru_maxrss * 1024
    if arguments.worker == "partialseg-files":
        masks = _MaskFiles(paths)
    elif arguments.worker.startswith("partialseg"):
        # A SimpleITK array view is valid only while its image exists, and
        # ``images`` stays referenced until the end of this function.
        masks = [sitk.GetArrayViewFromImage(mask) for mask in images.values()]

    if arguments.masks_out:
        if arguments.worker == "nnunet":
            np.savez(arguments.masks_out, labels=np.asarray(masks[0]))
        else:
            packed = {f"m{i}": np.packbits(np.asarray(mask) > 0) for i, mask in enumerate(masks)}
            np.savez(arguments.masks_out, shape=np.asarray(masks[0].shape), **packed)
    result = {
        "arm": arguments.worker,
        "classes": arguments.num_classes,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss": peak,
        "baseline_rss": baseline,
        "foreground": [float(np.mean(np.asarray(mask) > 0)) for mask in masks],
    }
    shutil.rmtree(scratch)
    print(json.dumps(result))


def run_arm(arm: str, num_classes: int, arguments: argparse.Namespace, masks_out: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        arm,
        "--num-classes",
        str(num_classes),
        "--threads",
        str(arguments.threads),
        "--masks-out",
        masks_out,
        "--patch",
        *map(str, arguments.patch),
        "--features",
        *map(str, arguments.features),
        "--spacing",
        *map(str, arguments.spacing),
    ]
    if arguments.synthetic:
        command.append("--synthetic")
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-5:]
        message = f"exit status {completed.returncode}: " + " | ".join(tail)
        return {"arm": arm, "classes": num_classes, "error": message}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _class_masks(archive) -> list[np.ndarray]:
    shape = tuple(archive["shape"])
    count = int(np.prod(shape))
    keys = sorted((k for k in archive.files if k.startswith("m")), key=lambda k: int(k[1:]))
    return [np.unpackbits(archive[k], count=count).reshape(shape) for k in keys]


def _label_map(masks: list[np.ndarray]) -> np.ndarray:
    """Return nnU-Net's label map of per-class masks: later classes overwrite earlier ones."""
    labels = np.zeros(masks[0].shape, np.int32)
    for index, mask in enumerate(masks):
        labels[mask > 0] = index + 1
    return labels


def agreement(path: str, reference_path: str) -> float | None:
    """Return the fraction of voxels (per class, or of the label map for nnU-Net) that agree."""
    if not (Path(path).exists() and Path(reference_path).exists()):
        return None
    with np.load(path) as archive, np.load(reference_path) as reference_archive:
        reference = _class_masks(reference_archive)
        if "labels" in archive.files:
            labels = archive["labels"]
            return float(np.mean(labels == _label_map(reference)))
        masks = _class_masks(archive)
    if len(masks) != len(reference):
        return None
    same = sum(int(np.count_nonzero(a == b)) for a, b in zip(masks, reference, strict=True))
    return same / sum(a.size for a in masks)


def summary_table(results: list[dict]) -> str:
    """Format the results as a Markdown table with ratios to MONAI and per-class memory."""
    by_key = {(r["arm"], r["classes"]): r for r in results if "error" not in r}
    header = (
        "| arm | classes | wall s | CPU s | peak RSS GB | over baseline GB | added per class "
        "(x uint8 mask) | peak / MONAI | wall / MONAI | agreement |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [header]
    for result in results:
        arm, classes = result["arm"], result["classes"]
        if "error" in result:
            rows.append(f"| {arm} | {classes} | failed: {result['error'][:80]} |")
            continue
        peak, increment = result["peak_rss"], result["peak_rss"] - result["baseline_rss"]
        single = by_key.get((arm, 1))
        per_class = "-"
        if single is not None and classes > 1:
            added = (peak - single["peak_rss"]) / (classes - 1) / result["mask_bytes"]
            per_class = f"{added:.2f}"
        monai = by_key.get(("monai", classes))
        peak_ratio = f"{peak / monai['peak_rss']:.2f}" if monai else "-"
        time_ratio = f"{result['seconds'] / monai['seconds']:.2f}" if monai else "-"
        match = result.get("agreement_with_partialseg")
        rows.append(
            f"| {arm} | {classes} | {result['seconds']:.1f} | {result['cpu_seconds']:.1f} | "
            f"{peak / 1e9:.2f} | {increment / 1e9:.2f} | {per_class} | {peak_ratio} | "
            f"{time_ratio} | {'-' if match is None else f'{match:.6f}'} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 8, 47])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--synthetic", action="store_true", help="512x512x300 phantom at 0.8 mm")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per arm")
    parser.add_argument(
        "--patch", type=int, nargs=3, default=list(PATCH), help="patch size (z, y, x) in voxels"
    )
    parser.add_argument(
        "--features", type=int, nargs="+", default=FEATURES, help="U-Net features per stage"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=list(SPACING),
        help="network spacing (z, y, x) in mm",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="ARM:CLASSES",
        help="do not run this arm at this class count (for example nnunet:104); repeatable",
    )
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--num-classes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--masks-out", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        worker(arguments)
        return

    image = load_input(arguments.synthetic)
    mask_bytes = image.GetNumberOfPixels()
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"# input {image.GetSize()} voxels, {mask_bytes / 1e6:.1f} MB per uint8 mask")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for num_classes in arguments.classes:
            for arm in arguments.arms:
                if f"{arm}:{num_classes}" in arguments.skip:
                    continue
                masks_out = str(Path(scratch) / f"{arm}-{num_classes}.npz")
                result = run_arm(arm, num_classes, arguments, masks_out)
                if "error" not in result and arm != "partialseg":
                    reference = str(Path(scratch) / f"partialseg-{num_classes}.npz")
                    result["agreement_with_partialseg"] = agreement(masks_out, reference)
                result["mask_bytes"] = mask_bytes
                results.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "foreground"}))
                sys.stdout.flush()
    print(summary_table(results))
    if arguments.output:
        record = {"command": sys.argv, "platform": platform.platform(), "results": results}
        arguments.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
