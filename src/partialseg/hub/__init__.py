"""Saving and loading networks as ``config.json`` + ``model.safetensors``, locally or on the Hub.

A saved model is a folder (or Hugging Face Hub model repo) with ``config.json``,
which names the architecture, its ``model_args``, the class names, the label
registry and the preprocessing; ``model.safetensors`` with the weights; and a
``README.md`` model card.
"""

from partialseg.hub.errors import (
    InvalidModelConfigError,
    InvalidWeightsFileError,
    ModelNotFoundError,
    WeightsMismatchError,
)
from partialseg.hub.loading import ModelFiles, build_network, from_pretrained, resolve_model_files
from partialseg.hub.model_card import render_model_card
from partialseg.hub.serialization import (
    CONFIG_NAME,
    FORMAT_VERSION,
    MODEL_CARD_NAME,
    WEIGHTS_NAME,
    build_config,
    read_config,
    read_weights,
    save_pretrained,
)
from partialseg.hub.transfer import (
    SkippedTensor,
    WeightTransferReport,
    load_matching_weights,
    transfer_weights,
)
from partialseg.hub.upload import push_to_hub

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODEL_CARD_NAME",
    "WEIGHTS_NAME",
    "InvalidModelConfigError",
    "InvalidWeightsFileError",
    "ModelFiles",
    "ModelNotFoundError",
    "SkippedTensor",
    "WeightTransferReport",
    "WeightsMismatchError",
    "build_config",
    "build_network",
    "from_pretrained",
    "load_matching_weights",
    "push_to_hub",
    "read_config",
    "read_weights",
    "render_model_card",
    "resolve_model_files",
    "save_pretrained",
    "transfer_weights",
]
