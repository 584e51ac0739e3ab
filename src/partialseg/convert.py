"""Conversion of nnU-Net v1 MultiTalent checkpoints into partialseg's safetensors format.

The published MultiTalent weights (Zenodo record 8297767, ``Task100_MultiTalent.zip``)
are nnU-Net v1 model folders. Each contains ``model_final_checkpoint.model``, a
``torch.save`` dict whose ``state_dict`` has ``module.``-prefixed keys, and
``model_final_checkpoint.model.pkl``, a pickle with the plans. Both files can only
be read with pickle, which runs code stored in the file, so only convert files
from a trusted source. The converted folder (``config.json`` +
``model.safetensors``) loads without pickle.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from partialseg.data.preprocessing import Preprocessing
from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.keymap import from_v1_state_dict
from partialseg.nn.registry import create_model

__all__ = ["convert_legacy_checkpoint", "multitalent_label_registry", "network_args_from_plans"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "model_final_checkpoint.model"
MAX_FEATURES_3D = 320
MULTITALENT_NUM_CLASSES = 47


def convert_legacy_checkpoint(
    source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    allow_pickle: bool,
) -> Path:
    """Convert an nnU-Net v1 MultiTalent model folder into a partialseg model folder.

    The network type is read from the checkpoint keys (plain or residual-encoder
    U-Net) and its topology from the plans of the last (full-resolution) stage.
    The weights are loaded strictly. ``preprocessing`` is set from the plans
    (spacing, patch size, CT clip to the 0.5 and 99.5 percentiles, mean and
    standard deviation), and a 47-class checkpoint gets the MultiTalent label
    registry, whose ``"<dataset>/<class>"`` names become the class names.

    Args:
        source: A v1 model folder containing ``model_final_checkpoint.model``, or
            the path of a ``.model`` file. The plans are read from the file of the
            same name plus ``.pkl``.
        output_dir: Folder to write ``config.json``, ``model.safetensors`` and the
            model card to.
        allow_pickle: Must be True. Both input files are pickles, and unpickling
            a file can run arbitrary code, so pass True only for files from a
            trusted source such as the published Zenodo record.

    Returns:
        The output folder.

    Raises:
        FileNotFoundError: If the checkpoint or plans file is missing.
        ValueError: If ``allow_pickle`` is not True, or the plans or checkpoint do not
            describe a supported network.
        KeyError: If the checkpoint keys do not match the network from the plans.
    """
    checkpoint_path, plans_path = _resolve_files(Path(source))
    if allow_pickle is not True:
        raise ValueError(
            f"allow_pickle={allow_pickle!r}, but reading {checkpoint_path} and {plans_path} "
            "requires pickle (torch.load with weights_only=False), which can run arbitrary "
            "code stored in the files. Pass allow_pickle=True only if the files come from a "
            "trusted source."
        )
    logger.info("Converting %s", checkpoint_path)
    plans = read_plans(plans_path)
    state_dict = read_legacy_state_dict(checkpoint_path)

    network = build_network_from_plans(plans, state_dict)
    network.load_state_dict(from_v1_state_dict(state_dict, network), strict=True)
    network.preprocessing = preprocessing_from_plans(plans)
    network.eval()

    output = network.save_pretrained(output_dir)
    logger.info("Wrote %s (%s) to %s", checkpoint_path.name, network.architecture, output)
    return Path(output)


def _resolve_files(source: Path) -> tuple[Path, Path]:
    checkpoint = source / CHECKPOINT_NAME if source.is_dir() else source
    if not checkpoint.is_file():
        found = sorted(p.name for p in source.glob("*.model")) if source.is_dir() else []
        hint = f"; .model files there: {found}" if found else ""
        raise FileNotFoundError(f"nnU-Net v1 checkpoint not found: {checkpoint}{hint}")
    plans = checkpoint.with_name(checkpoint.name + ".pkl")
    if not plans.is_file():
        raise FileNotFoundError(
            f"plans file not found: {plans}; nnU-Net v1 writes it next to the checkpoint"
        )
    return checkpoint, plans


def read_plans(path: Path) -> dict[str, Any]:
    """Unpickle a v1 ``.model.pkl`` file and return its plans dict.

    nnU-Net v1 stores ``{"init": ..., "name": ..., "plans": plans}``; a file
    holding the plans dict itself is accepted too. Only call this on trusted files.
    """
    with open(path, "rb") as file:
        content = pickle.load(file)
    plans = content.get("plans", content) if isinstance(content, Mapping) else None
    if not isinstance(plans, Mapping) or "plans_per_stage" not in plans:
        raise ValueError(
            f"{path} contains no nnU-Net v1 plans: expected a dict with 'plans_per_stage' "
            "(or one with a 'plans' entry holding it)"
        )
    return _to_builtin(plans)


def read_legacy_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load the ``state_dict`` of a v1 checkpoint with pickle. Only call this on trusted files."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise ValueError(
            f"{path} contains no state dict: expected a dict with a 'state_dict' entry"
        )
    return dict(checkpoint)


def network_args_from_plans(plans: Mapping[str, Any], *, residual: bool) -> dict[str, Any]:
    """Derive ``create_model`` keyword arguments from v1 plans.

    Features start at ``base_num_features`` and double per stage up to 320, the
    3D limit of nnU-Net v1. The plain U-Net's ``pool_op_kernel_sizes`` omit the
    first stage (stride 1), the residual plans list it.

    Args:
        plans: v1 plans with ``plans_per_stage``; the last stage is used.
        residual: Derive arguments for the residual-encoder U-Net.

    Returns:
        Keyword arguments for ``multitalent_unet`` / ``plain_unet`` or
        ``multitalent_resenc_unet`` / ``resenc_unet``.

    Example:
        >>> from partialseg.nn.registry import multitalent_plans
        >>> network_args_from_plans(multitalent_plans("plain"), residual=False)["strides"][-1]
        [1, 2, 2]
    """
    stage = _last_stage(plans)
    strides = [list(s) for s in stage["pool_op_kernel_sizes"]]
    if not residual:
        strides = [[1] * len(strides[0]), *strides]
    base = int(plans["base_num_features"])
    features = [min(base * 2**i, MAX_FEATURES_3D) for i in range(len(strides))]
    args: dict[str, Any] = {
        "in_channels": int(plans["num_modalities"]),
        "features_per_stage": features,
        "strides": strides,
        "kernel_sizes": [list(k) for k in stage["conv_kernel_sizes"]],
    }
    if residual:
        decoder_blocks = set(stage.get("num_blocks_decoder", [1]))
        if len(decoder_blocks) != 1:
            raise ValueError(
                f"num_blocks_decoder {stage['num_blocks_decoder']} varies per stage; "
                "ResEncUNet needs the same count for every decoder stage"
            )
        args["blocks_per_stage"] = list(stage["num_blocks_encoder"])
        args["n_conv_per_stage_decoder"] = decoder_blocks.pop()
    else:
        args["n_conv_per_stage"] = int(plans.get("conv_per_stage", 2))
        args["n_conv_per_stage_decoder"] = int(plans.get("conv_per_stage", 2))
    return args


def build_network_from_plans(
    plans: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> SegmentationNetwork:
    """Build the randomly initialised network that a v1 checkpoint's plans and keys describe.

    A 47-class checkpoint is built as ``multitalent_unet`` or
    ``multitalent_resenc_unet`` with the MultiTalent label registry, any other
    as ``plain_unet`` or ``resenc_unet`` with classes ``class_0``, ``class_1``, ...
    """
    residual = any(key.endswith("encoder.initial_conv.weight") for key in state_dict)
    args = network_args_from_plans(plans, residual=residual)
    num_classes = int(plans["num_classes"])
    if num_classes == MULTITALENT_NUM_CLASSES:
        registry = multitalent_label_registry()
        name = "multitalent_resenc_unet" if residual else "multitalent_unet"
        network = create_model(name, classes=registry, **args)
        network.label_registry = registry
        return network
    warnings.warn(
        f"the plans have {num_classes} classes, not the 47 of MultiTalent, so the network "
        "gets generic class names and no label registry",
        stacklevel=3,
    )
    return create_model("resenc_unet" if residual else "plain_unet", classes=num_classes, **args)


def preprocessing_from_plans(plans: Mapping[str, Any]) -> Preprocessing | None:
    """Read spacing, patch size and CT normalisation from v1 plans.

    Returns None, with a warning, when the first modality is not normalised as CT.
    """
    stage = _last_stage(plans)
    schemes = plans.get("normalization_schemes", {})
    scheme = schemes.get(0, schemes.get("0")) if isinstance(schemes, Mapping) else None
    if scheme != "CT":
        warnings.warn(
            f"the plans normalise the input with {scheme!r}, not 'CT', so the converted "
            "model stores no preprocessing",
            stacklevel=3,
        )
        return None
    intensity = _ct_intensity_properties(plans)
    return Preprocessing(
        spacing=stage["current_spacing"],
        patch_size=stage["patch_size"],
        ct_clip=(intensity["percentile_00_5"], intensity["percentile_99_5"]),
        ct_mean=intensity["mean"],
        ct_std=intensity["sd"],
    )


@functools.cache
def _multitalent_channels() -> dict[str, Any]:
    resource = importlib.resources.files("partialseg") / "resources" / "multitalent_channels.json"
    return json.loads(resource.read_text(encoding="utf-8"))


def multitalent_label_registry() -> Any:
    """Build the label registry of the 47 published MultiTalent output channels.

    Each source dataset is one registry dataset; each class is a ``region`` with
    the label values it covers in the original dataset, in channel order.

    Returns:
        A :class:`~partialseg.labels.LabelRegistry`.

    Example:
        >>> registry = multitalent_label_registry()
        >>> registry.num_classes, registry.class_names[0]
        (47, 'Task003_Liver/03_liver')
    """
    from partialseg.labels import LabelRegistry

    channels = _multitalent_channels()
    datasets: dict[str, dict[str, list[int]]] = {}
    for channel in channels["channels"]:
        name = channel["dataset"]
        if name in datasets and name != list(datasets)[-1]:
            raise ValueError(
                f"the channels of dataset {name!r} are not contiguous; the label registry "
                "keeps each dataset's classes together"
            )
        values = channel["source_label_values_in_original_dataset"]
        datasets.setdefault(name, {})[channel["region"]] = values
    registry = LabelRegistry()
    for name, classes in datasets.items():
        source_values = channels["task_label_maps"][name]["source"]
        registry.add_dataset(name, classes, label_values=[0, *source_values])
    return registry


def _last_stage(plans: Mapping[str, Any]) -> Mapping[str, Any]:
    stages = plans["plans_per_stage"]
    return stages[max(stages, key=int)]


def _ct_intensity_properties(plans: Mapping[str, Any]) -> Mapping[str, Any]:
    if "global_CT_intensity_properties" in plans:
        return plans["global_CT_intensity_properties"]
    properties = plans.get("dataset_properties", {}).get("intensityproperties", {})
    intensity = properties.get(0, properties.get("0"))
    if intensity is None:
        raise ValueError(
            "the plans contain no CT intensity properties: expected "
            "'global_CT_intensity_properties' or dataset_properties['intensityproperties'][0]"
        )
    return intensity


def _to_builtin(value: Any) -> Any:
    """Turn numpy scalars and arrays inside plans into Python numbers and lists."""
    if isinstance(value, Mapping):
        return {key: _to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value
