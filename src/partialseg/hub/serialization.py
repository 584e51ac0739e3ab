"""Writing and reading the ``config.json`` and ``model.safetensors`` of a saved network."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from partialseg.hub.errors import InvalidModelConfigError, InvalidWeightsFileError

if TYPE_CHECKING:
    from partialseg.nn.base import SegmentationNetwork

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODEL_CARD_NAME",
    "WEIGHTS_NAME",
    "build_config",
    "read_config",
    "read_weights",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1

# Safetensors metadata key of a JSON object mapping each tied state-dict key to the key
# whose tensor is stored. Safetensors rejects two names for one storage, so a tied
# tensor is written once.
_ALIASES_METADATA_KEY = "partialseg_aliases"
_REQUIRED_FIELDS = {
    "architecture": str,
    "model_args": dict,
    "class_names": list,
    "format_version": int,
}
_JSON_TYPE_NAMES = {str: "string", dict: "object", list: "array", int: "integer"}


def save_pretrained(
    network: SegmentationNetwork,
    directory: str | os.PathLike[str],
    *,
    model_card: bool = True,
    license: str | None = None,
    tags: Sequence[str] | None = None,
) -> Path:
    """Save a network as ``config.json``, ``model.safetensors`` and a ``README.md`` model card.

    The files are written to a temporary folder beside ``directory`` first. A new
    ``directory`` then appears in one rename, so a crash leaves either no model or a
    whole one. Into an existing directory each file is moved with an atomic replace
    (weights, model card, then ``config.json``), and other files there are left as
    they are.

    Args:
        network: The network to save.
        directory: Output folder, created with its parents if missing.
        model_card: Also write a ``README.md`` model card.
        license: License identifier for the model card, such as ``"cc-by-4.0"``.
        tags: Extra Hub tags for the model card.

    Returns:
        The output folder.

    Raises:
        NotADirectoryError: If ``directory`` is an existing file.
        TypeError: If ``network.model_args`` cannot be written as JSON.

    Example:
        >>> import tempfile
        >>> from partialseg.nn import create_model
        >>> network = create_model("plain_unet", classes=["liver", "spleen"],
        ...                        features_per_stage=[4, 8], strides=[1, 2])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = save_pretrained(network, Path(tmp) / "model")
        ...     sorted(path.name for path in folder.iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"cannot save the model to {directory}: it is a file; pass a directory path"
        )
    config = build_config(network)
    tensors, metadata = _tensors_for_saving(network)

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:12]}.partial"
    staging.mkdir()
    try:
        save_file(tensors, staging / WEIGHTS_NAME, metadata=metadata)
        (staging / CONFIG_NAME).write_text(_config_json(config), encoding="utf-8")
        if model_card:
            from partialseg.hub.model_card import render_model_card

            card = render_model_card(network, model_id=str(directory), license=license, tags=tags)
            (staging / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
        _publish(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "Saved %s with %d classes to %s", network.architecture, network.num_classes, directory
    )
    return directory


def build_config(network: SegmentationNetwork) -> dict[str, Any]:
    """Build the ``config.json`` content of a network.

    Args:
        network: The network to describe.

    Returns:
        A JSON-serialisable dict with the fields ``architecture``, ``model_args``,
        ``class_names``, ``labels``, ``preprocessing``, ``partialseg_version`` and
        ``format_version``.

    Raises:
        TypeError: If a value of ``network.model_args`` cannot be written as JSON.
    """
    import partialseg

    model_args = dict(network.model_args)
    for key, value in model_args.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"model_args[{key!r}] of the {network.architecture!r} network is a "
                f"{type(value).__name__}, which cannot be written to config.json ({error}); "
                "store JSON types (numbers, strings, lists, dicts) in model_args"
            ) from None
    registry = network.label_registry
    preprocessing = network.preprocessing
    return {
        "architecture": network.architecture,
        "model_args": model_args,
        "class_names": list(network.class_names),
        "labels": None if registry is None else registry.to_dict(),
        "preprocessing": None if preprocessing is None else preprocessing.to_dict(),
        "partialseg_version": partialseg.__version__,
        "format_version": FORMAT_VERSION,
    }


def read_config(path: str | os.PathLike[str], *, source: str | None = None) -> dict[str, Any]:
    """Read and check a ``config.json`` written by :func:`save_pretrained`.

    Args:
        path: The ``config.json`` file.
        source: Directory or repo id named in error messages; defaults to ``path``.

    Returns:
        The config, with ``labels`` and ``preprocessing`` set to None where absent.

    Raises:
        InvalidModelConfigError: If the file is not JSON, a required field is missing
            or has the wrong type, or it was written in a newer format.
    """
    path = Path(path)
    where = f"{path}" if source is None else f"{CONFIG_NAME} of {source!r}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidModelConfigError(
            f"{where} is not valid JSON ({error}); save the model again with "
            "save_pretrained or repair the file"
        ) from error
    if not isinstance(config, dict):
        raise InvalidModelConfigError(
            f"{where} must contain a JSON object, got {type(config).__name__}"
        )
    _check_fields(config, where)
    config.setdefault("labels", None)
    config.setdefault("preprocessing", None)
    return config


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a ``model.safetensors`` file into a CPU state dict, restoring tied keys.

    Args:
        path: The safetensors file.

    Returns:
        The state dict. Keys of tied tensors map to the same tensor.

    Raises:
        InvalidWeightsFileError: If the file is not a readable safetensors file.
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as weights:
            metadata = weights.metadata() or {}
            state_dict = {key: weights.get_tensor(key) for key in weights.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise InvalidWeightsFileError(
            f"cannot read {path} as a safetensors file ({error}); the file may be truncated. "
            "Download or save the model again"
        ) from error
    aliases = json.loads(metadata.get(_ALIASES_METADATA_KEY, "{}"))
    for alias, stored_key in aliases.items():
        state_dict[alias] = state_dict[stored_key]
    return state_dict


def _config_json(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _check_fields(config: dict[str, Any], where: str) -> None:
    for field, expected in _REQUIRED_FIELDS.items():
        if field not in config:
            raise InvalidModelConfigError(
                f"{where} is missing the required field {field!r}; fields present: {sorted(config)}"
            )
        value = config[field]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise InvalidModelConfigError(
                f"{where} field {field!r} must be a JSON {_JSON_TYPE_NAMES[expected]}, "
                f"got {type(value).__name__} {value!r}"
            )
    if config["format_version"] > FORMAT_VERSION:
        raise InvalidModelConfigError(
            f"{where} has format_version {config['format_version']}, written by partialseg "
            f"{config.get('partialseg_version', '(unknown version)')}; this partialseg reads "
            f"format_version {FORMAT_VERSION} and older. Upgrade partialseg"
        )
    names = config["class_names"]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise InvalidModelConfigError(
            f"{where} field 'class_names' must be a non-empty list of non-empty strings, "
            f"got {names!r}"
        )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidModelConfigError(f"{where} field 'class_names' repeats {duplicates}")
    for field in ("labels", "preprocessing"):
        if not isinstance(config.get(field), dict | None):
            raise InvalidModelConfigError(
                f"{where} field {field!r} must be a JSON object or null, got {config[field]!r}"
            )


def _tensors_for_saving(
    network: torch.nn.Module,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return contiguous CPU tensors with tied tensors stored once, and the file metadata."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_key_of_view: dict[tuple[Any, ...], str] = {}
    storage_users: dict[tuple[Any, ...], int] = {}
    state = {key: tensor.detach() for key, tensor in network.state_dict().items()}
    for key, tensor in state.items():
        view = (_storage_id(tensor), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        view += (tensor.dtype,)
        if view in first_key_of_view:
            aliases[key] = first_key_of_view[view]
            continue
        first_key_of_view[view] = key
        storage_users[_storage_id(tensor)] = storage_users.get(_storage_id(tensor), 0) + 1

    for key, tensor in state.items():
        if key in aliases:
            continue
        # Different views of one storage (not plain ties) are copied apart, because
        # safetensors rejects shared storage.
        shared = storage_users[_storage_id(tensor)] > 1
        tensor = tensor.to("cpu")
        tensors[key] = tensor.clone() if shared else tensor.contiguous()

    metadata = {"format": "pt"}
    if aliases:
        metadata[_ALIASES_METADATA_KEY] = json.dumps(aliases, sort_keys=True)
    return tensors, metadata


def _storage_id(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (tensor.device, tensor.untyped_storage().data_ptr())


def _publish(staging: Path, directory: Path) -> None:
    for path in staging.iterdir():
        _fsync(path)
    if not directory.exists():
        try:
            staging.rename(directory)
            _fsync_directory(directory.parent)
            return
        except OSError:
            # Another process created the directory in the meantime, so move the files.
            if not directory.is_dir():
                raise
    # config.json goes last, so a reader never sees a new config beside old weights.
    # NOTE: a crash between two replacements leaves the new weights beside the old
    # config.json. from_pretrained rejects that pair only when keys or shapes differ.
    for name in (WEIGHTS_NAME, MODEL_CARD_NAME, CONFIG_NAME):
        if (staging / name).exists():
            os.replace(staging / name, directory / name)
    _fsync_directory(directory)


def _fsync(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
