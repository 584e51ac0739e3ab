"""Tiny networks and a hand-built Hugging Face cache for the hub tests.

Every test runs with ``HF_HUB_OFFLINE=1``, so the real huggingface_hub client reads
only the local cache folders built here and never contacts a remote host.
"""

import hashlib
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants

from partialseg.data.preprocessing import Preprocessing
from partialseg.labels import LabelRegistry
from partialseg.nn import create_model

TINY_UNET = {"features_per_stage": [4, 8], "strides": [1, 2], "spatial_dims": 2}
LFS_FILES = {"model.safetensors"}


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    """Put huggingface_hub in offline mode, as ``HF_HUB_OFFLINE=1`` does at import time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, when it is imported.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def make_registry():
    registry = LabelRegistry()
    registry.add_dataset("D03", {"liver": [1, 2], "liver_tumor": [2]})
    registry.add_dataset("D09", {"spleen": [1]})
    return registry


def make_network(classes=None, seed=0):
    torch.manual_seed(seed)
    registry = make_registry()
    network = create_model("plain_unet", classes=classes or registry, **TINY_UNET)
    if classes is None:
        network.label_registry = registry
    network.preprocessing = Preprocessing(
        spacing=(1.5, 1.0, 1.0),
        patch_size=(96, 192, 192),
        ct_clip=(-927.0, 275.0),
        ct_mean=63.437,
        ct_std=175.481,
    )
    return network


@pytest.fixture
def network():
    return make_network()


@pytest.fixture
def image():
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def git_blob_id(content: bytes) -> str:
    """Return the git object id of a file, the cache's blob name for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def add_to_hub_cache(cache_dir, repo_id, folder, *, commit, refs=("main",)):
    """Store the files of ``folder`` in a Hugging Face cache as ``hf_hub_download`` does.

    Files go to ``blobs/<etag>`` (SHA-256 for LFS files, the git blob id otherwise),
    ``snapshots/<commit>/<name>`` links to them, and ``refs/<ref>`` contains the commit.
    """
    repo_folder = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    blobs = repo_folder / "blobs"
    snapshot = repo_folder / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(folder).iterdir()):
        content = path.read_bytes()
        if path.name in LFS_FILES:
            etag = hashlib.sha256(content).hexdigest()
        else:
            etag = git_blob_id(content)
        (blobs / etag).write_bytes(content)
        link = snapshot / path.name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blobs / etag, snapshot))
    for ref in refs:
        ref_file = repo_folder / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    return repo_folder


def outputs_of(network, image):
    network.eval()
    with torch.no_grad():
        return network(image)
