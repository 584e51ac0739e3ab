"""Loading by Hub repo id from a Hugging Face cache folder built by hand, offline."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import constants as hub_constants

from partialseg.hub import ModelNotFoundError, from_pretrained, save_pretrained

from .conftest import add_to_hub_cache, make_network, outputs_of

REPO_ID = "partialseg-test/tiny-unet"
COMMIT_MAIN = "a" * 40
COMMIT_V1 = "b" * 40


@pytest.fixture
def hub_cache(tmp_path, network):
    """A cache with main at COMMIT_MAIN (3 classes) and tag v1 at COMMIT_V1 (2 classes)."""
    cache = tmp_path / "hub-cache"
    save_pretrained(network, tmp_path / "main")
    add_to_hub_cache(cache, REPO_ID, tmp_path / "main", commit=COMMIT_MAIN, refs=("main",))
    older = make_network(classes=["liver", "spleen"], seed=7)
    save_pretrained(older, tmp_path / "v1")
    add_to_hub_cache(cache, REPO_ID, tmp_path / "v1", commit=COMMIT_V1, refs=("v1",))
    return cache


def test_cache_layout_matches_hub_client(hub_cache):
    snapshot = hub_cache / "models--partialseg-test--tiny-unet" / "snapshots" / COMMIT_MAIN

    assert (snapshot / "config.json").is_symlink()
    assert (snapshot / "model.safetensors").resolve().parent.name == "blobs"
    assert (hub_cache / "models--partialseg-test--tiny-unet" / "refs" / "main").read_text() == (
        COMMIT_MAIN
    )


def test_repo_id_loads_from_cache(hub_cache, network, image):
    loaded = from_pretrained(REPO_ID, cache_dir=hub_cache)

    assert loaded.class_names == network.class_names
    assert loaded.label_registry == network.label_registry
    expected, actual = outputs_of(network, image), outputs_of(loaded, image)
    for level_expected, level_actual in zip(expected, actual, strict=True):
        assert torch.equal(level_expected, level_actual)


def test_default_cache_from_hf_hub_cache(hub_cache, monkeypatch, network):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    # huggingface_hub reads HF_HUB_CACHE once, when it is imported.
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub_cache))

    loaded = from_pretrained(REPO_ID)

    assert loaded.class_names == network.class_names


def test_environment_variables_in_fresh_process(hub_cache):
    script = textwrap.dedent(
        f"""
        from partialseg.hub import from_pretrained
        network = from_pretrained({REPO_ID!r})
        print(network.class_names)
        """
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    environment.pop("HF_HOME", None)

    result = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "D03/liver_tumor" in result.stdout


def test_revision_selects_ref(hub_cache):
    tagged = from_pretrained(REPO_ID, cache_dir=hub_cache, revision="v1")
    default = from_pretrained(REPO_ID, cache_dir=hub_cache)

    assert tagged.class_names == ["liver", "spleen"]
    assert default.class_names == ["D03/liver", "D03/liver_tumor", "D09/spleen"]


def test_revision_commit_hash(hub_cache):
    loaded = from_pretrained(REPO_ID, cache_dir=hub_cache, revision=COMMIT_V1)

    assert loaded.class_names == ["liver", "spleen"]


def test_unknown_revision_not_found(hub_cache):
    with pytest.raises(ModelNotFoundError, match="revision 'v2'") as caught:
        from_pretrained(REPO_ID, cache_dir=hub_cache, revision="v2")

    assert REPO_ID in str(caught.value)


def test_local_files_only_without_offline_mode(hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    loaded = from_pretrained(REPO_ID, cache_dir=hub_cache, local_files_only=True)

    assert loaded.num_classes == 3


def test_model_in_neither_folder_nor_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "empty-cache"

    with pytest.raises(ModelNotFoundError) as caught:
        from_pretrained("partialseg-test/absent", cache_dir=cache)

    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert "'partialseg-test/absent'" in message
    assert str(cache) in message
    assert "not a local directory" in message
    assert "save_pretrained" in message


def test_cached_config_without_weights(tmp_path, network):
    save_pretrained(network, tmp_path / "model", model_card=False)
    (tmp_path / "model" / "model.safetensors").unlink()
    add_to_hub_cache(tmp_path / "cache", REPO_ID, tmp_path / "model", commit=COMMIT_MAIN)

    with pytest.raises(ModelNotFoundError, match=r"model\.safetensors is not in the Hugging Face"):
        from_pretrained(REPO_ID, cache_dir=tmp_path / "cache")


def test_missing_path_object_not_repo_id(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model directory"):
        from_pretrained(tmp_path / "org" / "name")


def test_invalid_repo_id_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="is not a Hub repo id"):
        from_pretrained(str(tmp_path / "missing" / "deeper" / "model"))


def test_directory_missing_weights(tmp_path, network):
    save_pretrained(network, tmp_path)
    (tmp_path / "model.safetensors").unlink()

    with pytest.raises(ModelNotFoundError, match=r"is missing model\.safetensors"):
        from_pretrained(tmp_path)


def test_file_path_rejected(tmp_path, network):
    save_pretrained(network, tmp_path)

    with pytest.raises(ModelNotFoundError, match="is a file"):
        from_pretrained(tmp_path / "config.json")


def test_local_directory_wins_over_repo_id(tmp_path, monkeypatch, network):
    monkeypatch.chdir(tmp_path)
    save_pretrained(network, tmp_path / "partialseg-test" / "tiny-unet")

    loaded = from_pretrained(REPO_ID, cache_dir=tmp_path / "empty-cache")

    assert loaded.class_names == network.class_names
