"""Crash-safe training checkpoints: weights, optimizer, schedule, history and random states.

A checkpoint is a folder under ``<output_dir>/checkpoint/``::

    latest.json                  the epoch and the name of the current folder
    epoch_0003-1a2b3c4d/
        model.safetensors        network state dict
        optimizer.pt             optimizer and gradient-scaler state (torch.save)
        random_state.safetensors torch generator states of every rank
        trainer_state.json       epoch, history, schedule, sampler epoch, config,
                                 Python, NumPy and patch-sampler random states

Each folder is written under a temporary name and renamed when complete, and
``latest.json`` is then replaced with ``os.replace``. A crash at any moment leaves
``latest.json`` naming a complete folder. Nothing is unpickled on reading:
``optimizer.pt`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
LATEST_NAME = "latest.json"
FORMAT_VERSION = 1
_MODEL_NAME = "model.safetensors"
_OPTIMIZER_NAME = "optimizer.pt"
_RANDOM_NAME = "random_state.safetensors"
_STATE_NAME = "trainer_state.json"


@dataclasses.dataclass
class Checkpoint:
    """The state of a run at the end of an epoch.

    Attributes:
        epoch: Number of completed epochs; training resumes at this epoch index.
        model: Network state dict.
        optimizer: ``state_dict()`` of the optimizer (or of both fine-tuning optimizers).
        grad_scaler: ``state_dict()`` of the mixed-precision gradient scaler, or None.
        trainer_state: JSON-serialisable state: history, schedule, sampler epoch,
            configuration and world size.
        random_states: One dict per rank from :func:`capture_random_state`.
    """

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    grad_scaler: dict[str, Any] | None
    trainer_state: dict[str, Any]
    random_states: list[dict[str, Any]]


def capture_random_state(
    patch_rng: np.random.Generator | None = None, transform: Any = None
) -> dict[str, Any]:
    """Capture every random generator that training draws from in this process.

    That is Python's ``random``, NumPy's global generator, torch's CPU generator
    (which TorchIO's random transforms draw from) and every CUDA generator, the
    patch sampler's NumPy generator, and a ``generator`` attribute of the
    transform if it is a ``torch.Generator``.

    Args:
        patch_rng: The ``rng`` of the :class:`~partialseg.data.patches.PatchDataset`.
        transform: The augmentation, checked for its own torch generator.

    Returns:
        A dict for :func:`restore_random_state` and :func:`write_checkpoint`.

    Example:
        >>> state = capture_random_state(np.random.default_rng(0))
        >>> first = torch.rand(1)
        >>> restore_random_state(state)
        >>> torch.equal(torch.rand(1), first)
        True
    """
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    generator = _transform_generator(transform)
    return {
        "python": _python_state_to_json(random.getstate()),
        "numpy": numpy_state,
        "patches": None if patch_rng is None else patch_rng.bit_generator.state,
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "transform": None if generator is None else generator.get_state(),
    }


def restore_random_state(
    state: dict[str, Any], patch_rng: np.random.Generator | None = None, transform: Any = None
) -> None:
    """Set every generator from a dict written by :func:`capture_random_state`.

    Args:
        state: The captured state.
        patch_rng: The patch sampler's generator, set in place.
        transform: The augmentation whose own torch generator, if any, is set.

    Raises:
        ValueError: If the state has CUDA generator states but this process has
            a different number of GPUs.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> state = capture_random_state(rng)
        >>> first = rng.random()
        >>> restore_random_state(state, rng)
        >>> rng.random() == first
        True
    """
    random.setstate(_python_state_from_json(state["python"]))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = dict(numpy_state["state"])
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch_cpu"])
    cuda_states = state["torch_cuda"]
    if cuda_states:
        if len(cuda_states) != torch.cuda.device_count():
            raise ValueError(
                f"the checkpoint has CUDA random states of {len(cuda_states)} GPUs but this "
                f"process sees {torch.cuda.device_count()}; resume with the same visible GPUs"
            )
        torch.cuda.set_rng_state_all(cuda_states)
    if patch_rng is not None and state["patches"] is not None:
        patch_rng.bit_generator.state = state["patches"]
    generator = _transform_generator(transform)
    if generator is not None and state["transform"] is not None:
        generator.set_state(state["transform"])


def write_checkpoint(output_dir: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write a checkpoint atomically and remove the previous one.

    Args:
        output_dir: The run's output folder; the checkpoint goes to its
            ``checkpoint/`` subfolder.
        checkpoint: What to write.

    Returns:
        The folder of the new checkpoint.

    Example:
        >>> import tempfile
        >>> state = capture_random_state()
        >>> checkpoint = Checkpoint(1, {"w": torch.ones(2)}, {}, None, {"history": []}, [state])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = write_checkpoint(tmp, checkpoint)
        ...     read_checkpoint(tmp).model["w"].tolist()
        [1.0, 1.0]
    """
    root = Path(output_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch_{checkpoint.epoch:04d}-{uuid.uuid4().hex[:8]}"
    staging = root / f".{name}.partial"
    staging.mkdir()
    try:
        _write_folder(staging, checkpoint)
        os.replace(staging, root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _fsync_directory(root)

    pointer = {"format_version": FORMAT_VERSION, "epoch": checkpoint.epoch, "directory": name}
    write_json_atomic(root / LATEST_NAME, pointer)
    for stale in root.iterdir():
        if stale.is_dir() and stale.name != name:
            shutil.rmtree(stale, ignore_errors=True)
    logger.debug("wrote checkpoint of epoch %d to %s", checkpoint.epoch, root / name)
    return root / name


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """Return the folder of the newest complete checkpoint, or None if there is none.

    Args:
        output_dir: The run's output folder.

    Returns:
        The folder named by ``checkpoint/latest.json``, or None without that file.

    Raises:
        ValueError: If ``latest.json`` is unreadable or names a missing folder.

    Example:
        >>> import tempfile
        >>> latest_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    root = Path(output_dir) / CHECKPOINT_DIR
    pointer_path = root / LATEST_NAME
    if not pointer_path.is_file():
        return None
    try:
        pointer = json.loads(pointer_path.read_text())
        folder = root / pointer["directory"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{pointer_path} is not a valid checkpoint pointer ({error}); delete "
            f"{root} to start over"
        ) from error
    if pointer.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{pointer_path} has checkpoint format {pointer.get('format_version')!r}, but "
            f"this partialseg reads format {FORMAT_VERSION}; resume with the partialseg "
            "version that wrote it"
        )
    if not folder.is_dir():
        raise ValueError(
            f"{pointer_path} names the folder {folder.name!r}, which does not exist; "
            f"delete {root} to start over"
        )
    return folder


def checkpoint_progress(output_dir: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Return ``(completed epochs, epochs of the whole run)`` of the newest checkpoint.

    Only ``trainer_state.json`` is read, not the tensors.

    Args:
        output_dir: The run's output folder.

    Returns:
        The two epoch counts, or None if the run has no checkpoint.

    Raises:
        ValueError: If the checkpoint is damaged or of another format.

    Example:
        >>> import tempfile
        >>> checkpoint_progress(tempfile.mkdtemp()) is None
        True
    """
    folder = latest_checkpoint(output_dir)
    if folder is None:
        return None
    state = json.loads((folder / _STATE_NAME).read_text())
    schedule = state["schedule"]
    total = schedule["head_epochs"] + schedule["warmup_epochs"] + schedule["poly_epochs"]
    return int(state["epoch"]), int(total)


def remove_checkpoint(output_dir: str | os.PathLike[str]) -> None:
    """Delete the ``checkpoint/`` folder of a run, if there is one.

    Example:
        >>> import tempfile
        >>> remove_checkpoint(tempfile.mkdtemp())
    """
    shutil.rmtree(Path(output_dir) / CHECKPOINT_DIR, ignore_errors=True)


def read_checkpoint(
    output_dir: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read the newest checkpoint of a run.

    Args:
        output_dir: The run's output folder.
        map_location: Device of the optimizer's tensors.

    Returns:
        The checkpoint.

    Raises:
        FileNotFoundError: If the run has no checkpoint.
        ValueError: If the checkpoint is damaged or of another format.
    """
    folder = latest_checkpoint(output_dir)
    if folder is None:
        raise FileNotFoundError(
            f"no checkpoint in {Path(output_dir) / CHECKPOINT_DIR}; start the run without "
            "resume, or pass the output folder of the interrupted run"
        )
    state = json.loads((folder / _STATE_NAME).read_text())
    optimizer = torch.load(folder / _OPTIMIZER_NAME, map_location=map_location, weights_only=True)
    tensors = load_file(folder / _RANDOM_NAME)
    random_states = []
    for rank, json_part in enumerate(state.pop("random_states")):
        prefix = f"rank{rank}."
        cuda = sorted(key for key in tensors if key.startswith(f"{prefix}torch_cuda."))
        random_states.append(
            {
                **json_part,
                "torch_cpu": tensors[f"{prefix}torch_cpu"],
                "torch_cuda": [tensors[key] for key in cuda],
                "transform": tensors.get(f"{prefix}transform"),
            }
        )
    return Checkpoint(
        epoch=int(state.pop("epoch")),
        model=load_file(folder / _MODEL_NAME),
        optimizer=optimizer["optimizer"],
        grad_scaler=optimizer["grad_scaler"],
        trainer_state=state,
        random_states=random_states,
    )


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, flush it to disk, then move it over ``path``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "log.json"
        >>> write_json_atomic(path, {"b": 1, "a": 2})
        >>> path.read_text().splitlines()[1]
        '  "a": 2,'
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _write_folder(folder: Path, checkpoint: Checkpoint) -> None:
    model = {key: value.detach().cpu().contiguous() for key, value in checkpoint.model.items()}
    save_file(model, folder / _MODEL_NAME)
    optimizer = {"optimizer": checkpoint.optimizer, "grad_scaler": checkpoint.grad_scaler}
    torch.save(optimizer, folder / _OPTIMIZER_NAME)

    # Generator states that are byte tensors go to safetensors, the rest to JSON.
    tensors: dict[str, torch.Tensor] = {}
    json_parts = []
    for rank, random_state in enumerate(checkpoint.random_states):
        prefix = f"rank{rank}."
        tensors[f"{prefix}torch_cpu"] = random_state["torch_cpu"]
        for index, cuda_state in enumerate(random_state["torch_cuda"]):
            tensors[f"{prefix}torch_cuda.{index:03d}"] = cuda_state
        if random_state["transform"] is not None:
            tensors[f"{prefix}transform"] = random_state["transform"]
        json_parts.append({key: random_state[key] for key in ("python", "numpy", "patches")})
    save_file(
        {key: value.cpu().contiguous() for key, value in tensors.items()}, folder / _RANDOM_NAME
    )

    trainer_state = {
        **checkpoint.trainer_state,
        "epoch": checkpoint.epoch,
        "random_states": json_parts,
    }
    (folder / _STATE_NAME).write_text(json.dumps(trainer_state, indent=2, sort_keys=True))
    for path in folder.iterdir():
        _fsync(path)


def _transform_generator(transform: Any) -> torch.Generator | None:
    generator = getattr(transform, "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


def _python_state_to_json(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _python_state_from_json(state: list) -> tuple:
    version, internal, gauss_next = state
    return (version, tuple(internal), gauss_next)


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _fsync_directory(directory: Path) -> None:
    # Directory fsync makes the rename durable; some platforms do not allow it.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
