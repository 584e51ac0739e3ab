"""Tiny training configurations on the synthetic collection, shared by the training tests."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from partialseg.training import Trainer, TrainingConfig

# A two-stage network with 4 and 8 features on 16x32x32 patches, small enough
# for many short runs on a CPU.
TINY = {
    "patch_size": (16, 32, 32),
    "batch_size": 2,
    "model_args": {"features_per_stage": [4, 8]},
    "device": "cpu",
    "progress": False,
}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the previous count.

    On a two-core machine loaded by other processes, a step of the tiny network
    took about 2 s with two torch threads and 0.1 s with one, because the threads
    wait for each other.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_torch() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment of training subprocesses: one torch thread, gloo on the loopback device."""
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        # Gloo otherwise resolves the host name to pick an interface, which can take seconds.
        environment.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return environment


@pytest.fixture(scope="session")
def cli_options(synthetic_collection: list[Path]) -> list[str]:
    """Command-line options of `partialseg train` that equal ``make_config``'s defaults."""
    options = ["--patch-size", "16,32,32", "--batch-size", "2", "--features", "4,8"]
    options += ["--iterations", "2", "--device", "cpu", "--no-progress"]
    for folder in synthetic_collection:
        options += ["--dataset", str(folder)]
    return options


@pytest.fixture(scope="session")
def make_config(synthetic_collection: list[Path]) -> Callable[..., TrainingConfig]:
    """Build a tiny TrainingConfig on the whole synthetic collection."""

    def make(output_dir: Path, **overrides) -> TrainingConfig:
        options = {
            "datasets": [str(folder) for folder in synthetic_collection],
            "output_dir": str(output_dir),
            "epochs": 2,
            "iterations_per_epoch": 2,
            **TINY,
        }
        options.update(overrides)
        return TrainingConfig(**options)

    return make


@pytest.fixture(scope="session")
def pretrained_model(
    synthetic_collection: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model trained briefly on the first two synthetic datasets, saved with save_pretrained."""
    output = tmp_path_factory.mktemp("pretrained")
    config = TrainingConfig(
        datasets=[str(folder) for folder in synthetic_collection[:2]],
        output_dir=str(output),
        epochs=1,
        iterations_per_epoch=2,
        **TINY,
    )
    with one_torch_thread():
        Trainer(config).fit()
    return output / "model"
