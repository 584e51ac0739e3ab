"""push_to_hub with a local stand-in for the Hub server.

The real Hub cannot be reached from the test machine, so ``LocalHub`` is a minimal
``HfApi`` subclass whose three server calls (create_repo, create_branch,
upload_folder) record their arguments and store the uploaded folder in a local
Hugging Face cache, laid out as ``hf_hub_download`` lays it out. Everything else,
including the download side, is the real huggingface_hub client.
"""

import hashlib

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, RepoUrl

from partialseg.hub import from_pretrained, push_to_hub

from .conftest import add_to_hub_cache, outputs_of

ENDPOINT = "https://hub.invalid"


class LocalHub(HfApi):
    def __init__(self, cache_dir):
        super().__init__(endpoint=ENDPOINT, token=False)
        self.cache_dir = cache_dir
        self.calls = []
        self.uploaded_files = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"{ENDPOINT}/{repo_id}", endpoint=ENDPOINT)

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        folder = kwargs["folder_path"]
        self.uploaded_files = {path.name: path.read_bytes() for path in folder.iterdir()}
        digest = hashlib.sha1()
        for name, content in sorted(self.uploaded_files.items()):
            digest.update(name.encode() + content)
        commit = digest.hexdigest()
        ref = kwargs["revision"] or "main"
        add_to_hub_cache(self.cache_dir, kwargs["repo_id"], folder, commit=commit, refs=(ref,))
        return CommitInfo(
            commit_url=f"{ENDPOINT}/{kwargs['repo_id']}/commit/{commit}",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid=commit,
            _endpoint=ENDPOINT,
        )


@pytest.fixture
def hub(tmp_path):
    return LocalHub(tmp_path / "cache")


def test_push_returns_commit_url(network, hub):
    url = push_to_hub(network, "org/tiny", api=hub)

    assert url.startswith(f"{ENDPOINT}/org/tiny/commit/")


def test_push_creates_repo_then_uploads(network, hub):
    push_to_hub(network, "org/tiny", api=hub, private=True, token="hf_test")

    names = [name for name, _, _ in hub.calls]
    assert names == ["create_repo", "upload_folder"]
    _, repo_id, create_options = hub.calls[0]
    assert repo_id == "org/tiny"
    assert create_options["exist_ok"] is True
    assert create_options["private"] is True
    assert create_options["repo_type"] == "model"
    assert create_options["token"] == "hf_test"


def test_upload_arguments(network, hub):
    push_to_hub(network, "org/tiny", api=hub, commit_message="Add fold 0")

    _, _, upload = hub.calls[-1]
    assert upload["repo_id"] == "org/tiny"
    assert upload["repo_type"] == "model"
    assert upload["commit_message"] == "Add fold 0"
    assert upload["revision"] is None
    assert upload["create_pr"] is False
    assert sorted(hub.uploaded_files) == ["README.md", "config.json", "model.safetensors"]


def test_uploaded_card_names_repo(network, hub):
    push_to_hub(network, "org/tiny", api=hub, license="apache-2.0")

    card = hub.uploaded_files["README.md"].decode()
    assert "partialseg predict -m org/tiny" in card
    assert "license: apache-2.0" in card


def test_revision_creates_branch(network, hub):
    push_to_hub(network, "org/tiny", api=hub, revision="fold-0")

    assert hub.calls[1] == (
        "create_branch",
        "org/tiny",
        {"branch": "fold-0", "token": None, "exist_ok": True},
    )
    assert hub.calls[2][2]["revision"] == "fold-0"


def test_pull_request_skips_branch(network, hub):
    push_to_hub(network, "org/tiny", api=hub, revision="main", create_pr=True)

    names = [name for name, _, _ in hub.calls]
    assert names == ["create_repo", "upload_folder"]
    assert hub.calls[-1][2]["create_pr"] is True


def test_pushed_model_loads_offline(network, image, hub, tmp_path):
    push_to_hub(network, "org/tiny", api=hub, revision="fold-0")

    loaded = from_pretrained("org/tiny", cache_dir=tmp_path / "cache", revision="fold-0")

    assert loaded.class_names == network.class_names
    for expected, actual in zip(outputs_of(network, image), outputs_of(loaded, image), strict=True):
        assert torch.equal(expected, actual)


def test_network_method_delegates(network, hub):
    url = network.push_to_hub("org/tiny", api=hub)

    assert "/org/tiny/commit/" in url
