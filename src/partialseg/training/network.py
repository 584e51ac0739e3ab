"""Building the network of a training run from its configuration."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from partialseg.data.preprocessing import Preprocessing
from partialseg.labels import LabelRegistry
from partialseg.nn import create_model, plan_topology
from partialseg.nn.base import SegmentationNetwork
from partialseg.training.config import TrainingConfig

logger = logging.getLogger(__name__)


def build_network(
    config: TrainingConfig,
    *,
    class_names: Sequence[str],
    registry: LabelRegistry | None,
    preprocessing: Preprocessing,
) -> SegmentationNetwork:
    """Create the configured architecture with one output per class.

    For ``plain_unet`` without ``strides`` in ``model_args``, strides and kernels
    are planned for the patch size and spacing as nnU-Net does, and
    ``preprocessing.patch_size`` is rounded up in place to fit the strides.

    Args:
        config: The run's configuration.
        class_names: Output class names in channel order.
        registry: Label registry stored with the network, or None.
        preprocessing: Spacing, patch size and CT normalisation stored with the network.

    Returns:
        The randomly initialised network.
    """
    model_args = dict(config.model_args)
    if config.architecture == "plain_unet" and "strides" not in model_args:
        planned = _plan_topology(preprocessing, model_args.get("features_per_stage"))
        model_args.update(planned)
    network = create_model(config.architecture, classes=list(class_names), **model_args)
    network.label_registry = registry
    network.preprocessing = preprocessing
    n_parameters = sum(p.numel() for p in network.parameters())
    logger.info(
        "%s with %d classes, %d parameters",
        config.architecture,
        network.num_classes,
        n_parameters,
    )
    return network


def _plan_topology(preprocessing: Preprocessing, features: list[int] | None) -> dict[str, Any]:
    """Choose strides and kernels for the patch size and spacing, as nnU-Net does."""
    options: dict[str, Any] = {"base_features": 16, "max_features": 320}
    if features:
        options = {"base_features": features[0], "max_stages": len(features)}
    topology = plan_topology(preprocessing.patch_size, preprocessing.spacing, **options)
    if tuple(topology.patch_size) != preprocessing.patch_size:
        logger.info(
            "patch size %s rounded up to %s to fit the network's strides",
            preprocessing.patch_size,
            tuple(topology.patch_size),
        )
        preprocessing.patch_size = tuple(int(p) for p in topology.patch_size)
    model_args = topology.model_args()
    if features:
        if len(features) > len(topology.strides):
            logger.warning(
                "features_per_stage %s lists %d stages, but patch size %s at spacing %s allows "
                "only %d; using %s. Enlarge the patch or list fewer stages to silence this.",
                list(features),
                len(features),
                preprocessing.patch_size,
                preprocessing.spacing,
                len(topology.strides),
                list(features[: len(topology.strides)]),
            )
        model_args["features_per_stage"] = list(features[: len(topology.strides)])
    return model_args
