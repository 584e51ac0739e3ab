"""Errors raised while saving, finding and loading pretrained networks."""

from __future__ import annotations

__all__ = [
    "InvalidModelConfigError",
    "InvalidWeightsFileError",
    "ModelNotFoundError",
    "WeightsMismatchError",
]


class ModelNotFoundError(FileNotFoundError):
    """A model folder, Hub repo, revision or model file was not found locally or on the Hub.

    Subclasses :class:`FileNotFoundError`, so handlers written for missing files
    keep working.
    """


class InvalidModelConfigError(ValueError):
    """``config.json`` is not valid JSON, lacks a field or names an unknown architecture."""


class InvalidWeightsFileError(ValueError):
    """``model.safetensors`` cannot be read as a safetensors file."""


class WeightsMismatchError(RuntimeError):
    """The weights file does not match the network that ``config.json`` describes.

    Subclasses :class:`RuntimeError`, the error that
    :meth:`torch.nn.Module.load_state_dict` raises for the same problem.
    """
