"""Loading saved networks from a local folder or the Hugging Face Hub, also for fine-tuning."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from partialseg.hub.errors import InvalidModelConfigError, ModelNotFoundError
from partialseg.hub.serialization import CONFIG_NAME, WEIGHTS_NAME, read_config, read_weights
from partialseg.hub.transfer import load_matching_weights, transfer_weights
from partialseg.labels import LabelRegistry

if TYPE_CHECKING:
    from collections.abc import Sequence

    from partialseg.nn.base import SegmentationNetwork

__all__ = ["ModelFiles", "from_pretrained", "resolve_model_files"]

logger = logging.getLogger(__name__)


class ModelFiles(NamedTuple):
    """Local paths of a saved model's files.

    Attributes:
        config: The ``config.json`` file.
        weights: The ``model.safetensors`` file.
        source: The directory or Hub repo id the files came from, for messages.
    """

    config: Path
    weights: Path
    source: str


def from_pretrained(
    repo_id_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    map_location: str | torch.device = "cpu",
    classes: LabelRegistry | Sequence[str] | int | None = None,
    strict: bool = True,
) -> SegmentationNetwork:
    """Load a network saved with :func:`save_pretrained` or pushed to the Hugging Face Hub.

    ``repo_id_or_path`` is first looked up as a local directory. Otherwise it is a
    Hub repo id, and ``config.json`` and ``model.safetensors`` are fetched with
    :func:`huggingface_hub.hf_hub_download`. That function reads the local Hugging
    Face cache without network access when ``local_files_only`` is true or the
    environment sets ``HF_HUB_OFFLINE=1``. Weights are read with safetensors only,
    never with pickle.

    With ``classes``, the network is built for those classes to be fine-tuned (see
    :func:`~partialseg.hub.transfer.transfer_weights`): every backbone tensor is
    loaded, the head rows of classes whose full name is in the saved model are
    copied to their new channels, and the heads of the other classes keep their
    fresh initialisation. Tensors skipped for a shape mismatch are reported with
    :func:`warnings.warn`.

    Args:
        repo_id_or_path: A directory written by :func:`save_pretrained`, or a Hub
            repo id such as ``"org/name"``.
        revision: Branch, tag or commit hash of a Hub repo; None means ``"main"``.
            Ignored, with a warning, for a local directory.
        cache_dir: Hugging Face cache folder; None uses ``HF_HUB_CACHE``.
        local_files_only: Read only the local cache, never the network.
        token: Hub access token for private or gated repos; None uses the saved login.
        map_location: Device the returned network is moved to.
        classes: New output classes for fine-tuning: a
            :class:`~partialseg.labels.LabelRegistry`, class names or a count. None
            loads the saved classes.
        strict: Raise when the weights lack a tensor of the network, contain an
            extra one or, when ``classes`` is None, have a tensor of another shape.
            When false, such tensors are skipped with a warning.

    Returns:
        The network in eval mode, with ``label_registry`` and ``preprocessing``
        restored. With ``classes``, ``label_registry`` is the new registry (None
        when ``classes`` is not a registry).

    Raises:
        ModelNotFoundError: If the model is neither a local directory nor in the
            Hub cache or on the Hub.
        InvalidModelConfigError: If ``config.json`` is malformed or names an
            architecture that is not registered.
        InvalidWeightsFileError: If ``model.safetensors`` cannot be read.
        WeightsMismatchError: If ``strict`` and the weights do not match the network.

    Example:
        >>> import tempfile
        >>> from partialseg.nn import create_model
        >>> network = create_model("plain_unet", classes=["liver", "spleen"],
        ...                        features_per_stage=[4, 8], strides=[1, 2])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = network.save_pretrained(tmp)
        ...     loaded = from_pretrained(tmp)
        ...     tuned = from_pretrained(tmp, classes=["liver", "kidney"])
        >>> loaded.class_names, tuned.class_names
        (['liver', 'spleen'], ['liver', 'kidney'])
    """
    files = resolve_model_files(
        repo_id_or_path,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
    )
    config = read_config(files.config, source=files.source)
    state_dict = read_weights(files.weights)

    if classes is None:
        network = build_network(config, source=files.source)
        load_matching_weights(network, state_dict, strict=strict, source=files.source)
        network.label_registry = _registry_from_config(config, source=files.source)
    else:
        network = build_network(config, source=files.source, classes=classes)
        report = transfer_weights(
            network,
            state_dict,
            source_class_names=config["class_names"],
            strict=strict,
            source=files.source,
        )
        logger.info("Loaded %s for fine-tuning: %s", files.source, report.summary())
        if isinstance(classes, LabelRegistry):
            network.label_registry = classes
    network.preprocessing = _preprocessing_from_config(config, source=files.source)

    network.to(map_location)
    network.eval()
    logger.info(
        "Loaded %s (%s, %d classes)",
        files.source,
        config["architecture"],
        len(config["class_names"]),
    )
    return network


def resolve_model_files(
    repo_id_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> ModelFiles:
    """Find the ``config.json`` and ``model.safetensors`` of a local or Hub model.

    A path object is always a local directory. A string is a local directory if one
    exists at that path, and a Hub repo id otherwise, unless its first part names an
    existing local folder: then it is taken for a mistyped path and rejected
    without contacting the Hub.

    Args:
        repo_id_or_path: Directory or Hub repo id.
        revision: Branch, tag or commit hash of a Hub repo.
        cache_dir: Hugging Face cache folder; None uses ``HF_HUB_CACHE``.
        local_files_only: Read only the local cache.
        token: Hub access token.

    Returns:
        The local paths of both files.

    Raises:
        ModelNotFoundError: If the directory lacks a file, or the repo or one of its
            files is neither cached nor downloadable.
    """
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            warnings.warn(
                f"revision={revision!r} is ignored because {str(path)!r} is a local directory",
                stacklevel=3,
            )
        return _local_files(path)
    if path.exists():
        raise ModelNotFoundError(
            f"{str(path)!r} is a file; pass the directory that contains {CONFIG_NAME} and "
            f"{WEIGHTS_NAME} (written by save_pretrained) or a Hub repo id such as 'org/name'"
        )
    repo_id = os.fspath(repo_id_or_path)
    if isinstance(repo_id_or_path, os.PathLike) or not _is_repo_id(repo_id):
        raise ModelNotFoundError(
            f"no model directory {str(path)!r} exists, and {repo_id!r} is not a Hub repo id "
            "such as 'org/name'; pass the directory written by save_pretrained or a repo id"
        )
    if path.parent.is_dir() and path.parent != Path("."):
        # "runs/model" with an existing folder "runs" is a mistyped local path far
        # more often than a Hub repo of an organisation named like that folder.
        raise ModelNotFoundError(
            f"no model directory {str(path)!r} exists, although its parent folder "
            f"{str(path.parent)!r} does; check the path. To load the Hub repo {repo_id!r} "
            "instead, run from another folder or download it with huggingface_hub first"
        )
    download_options = {
        "revision": revision,
        "cache_dir": cache_dir,
        "local_files_only": local_files_only,
        "token": token,
    }
    config = _download(repo_id, CONFIG_NAME, **download_options)
    weights = _download(repo_id, WEIGHTS_NAME, **download_options)
    return ModelFiles(config, weights, repo_id)


def build_network(
    config: dict[str, Any],
    *,
    source: str,
    classes: LabelRegistry | Sequence[str] | int | None = None,
) -> SegmentationNetwork:
    """Build the randomly initialised network that a checked ``config.json`` describes.

    Args:
        config: Output of :func:`~partialseg.hub.serialization.read_config`.
        source: Directory or repo id, for messages.
        classes: Output classes; None uses ``config["class_names"]``.

    Returns:
        The network from :func:`partialseg.nn.create_model`.

    Raises:
        InvalidModelConfigError: If the architecture is not registered or
            ``create_model`` rejects ``model_args``.
    """
    from partialseg.nn import create_model, list_models
    from partialseg.nn.heads import unknown_name_message

    architecture = config["architecture"]
    known = list_models()
    if architecture not in known:
        unknown = unknown_name_message("architecture", architecture, known)
        version = config.get("partialseg_version", "(unknown)")
        raise InvalidModelConfigError(
            f"{CONFIG_NAME} of {source!r} names an {unknown}. The model was saved by "
            f"partialseg {version}: install a version that has this architecture, or import "
            "the module that registers it with partialseg.nn.register_model before loading"
        )
    model_args = config["model_args"]
    try:
        return create_model(
            architecture,
            classes=config["class_names"] if classes is None else classes,
            **model_args,
        )
    except (TypeError, ValueError) as error:
        raise InvalidModelConfigError(
            f"create_model({architecture!r}) rejected the model_args {model_args} in "
            f"{CONFIG_NAME} of {source!r}: {error}"
        ) from error


def _local_files(directory: Path) -> ModelFiles:
    config = directory / CONFIG_NAME
    weights = directory / WEIGHTS_NAME
    missing = [path.name for path in (config, weights) if not path.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"directory {str(directory)!r} is missing {' and '.join(missing)}; pass a directory "
            "written by save_pretrained, or convert published nnU-Net weights with "
            "`partialseg convert`"
        )
    return ModelFiles(config, weights, str(directory))


def _is_repo_id(text: str) -> bool:
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _download(repo_id: str, filename: str, **options: Any) -> Path:
    import partialseg

    revision = options["revision"] or "main"
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            library_name="partialseg",
            library_version=partialseg.__version__,
            **options,
        )
    except LocalEntryNotFoundError as error:
        cache = options["cache_dir"] or hub_constants.HF_HUB_CACHE
        raise ModelNotFoundError(
            f"model {repo_id!r} (revision {revision!r}) is not a local directory, its "
            f"{filename} is not in the Hugging Face cache at {str(cache)!r}, and the Hub "
            "could not be reached (HF_HUB_OFFLINE=1, local_files_only=True or no connection). "
            f"Download it once while online with from_pretrained({repo_id!r}) or "
            f"`hf download {repo_id}`, pass cache_dir= if it is cached elsewhere, or pass "
            "the directory written by save_pretrained"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelNotFoundError(
            f"revision {revision!r} of Hub repo {repo_id!r} does not exist; pass an existing "
            "branch, tag or commit hash"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"Hub repo {repo_id!r} was not found, or it is private or gated and no valid "
            "token was sent; check the repo id, log in with `hf auth login` or pass token="
        ) from error
    except EntryNotFoundError as error:
        raise ModelNotFoundError(
            f"Hub repo {repo_id!r} has no {filename} at revision {revision!r}, so it is not "
            "a partialseg model; convert nnU-Net weights with `partialseg convert` first"
        ) from error
    return Path(path)


def _registry_from_config(config: dict[str, Any], *, source: str) -> LabelRegistry | None:
    if config["labels"] is None:
        return None
    try:
        registry = LabelRegistry.from_dict(config["labels"])
    except (TypeError, ValueError, KeyError) as error:
        raise InvalidModelConfigError(
            f"field 'labels' of {CONFIG_NAME} of {source!r} is not a valid label registry: {error}"
        ) from error
    if registry.class_names != config["class_names"]:
        warnings.warn(
            f"the label registry in {CONFIG_NAME} of {source!r} lists the classes "
            f"{registry.class_names}, but the network outputs {config['class_names']}; "
            "channel c of the output is class_names[c]",
            stacklevel=3,
        )
    return registry


def _preprocessing_from_config(config: dict[str, Any], *, source: str) -> Any:
    if config["preprocessing"] is None:
        return None
    from partialseg.data.preprocessing import Preprocessing

    try:
        return Preprocessing.from_dict(config["preprocessing"])
    except (TypeError, ValueError) as error:
        raise InvalidModelConfigError(
            f"field 'preprocessing' of {CONFIG_NAME} of {source!r} is invalid: {error}"
        ) from error
