"""Uploading a saved network to the Hugging Face Hub."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import HfApi

from partialseg.hub.model_card import render_model_card
from partialseg.hub.serialization import MODEL_CARD_NAME, save_pretrained

if TYPE_CHECKING:
    from partialseg.nn.base import SegmentationNetwork

__all__ = ["push_to_hub"]

logger = logging.getLogger(__name__)


def push_to_hub(
    network: SegmentationNetwork,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload partialseg model",
    revision: str | None = None,
    create_pr: bool = False,
    license: str | None = None,
    tags: Sequence[str] | None = None,
    api: HfApi | None = None,
) -> str:
    """Save a network with :func:`save_pretrained` and upload it to a Hub model repo.

    The repo is created if it does not exist, and so is the branch ``revision``
    unless ``create_pr`` is set. The upload is one commit with ``config.json``,
    ``model.safetensors`` and the ``README.md`` model card.

    Args:
        network: The network to upload.
        repo_id: Hub repo id such as ``"org/name"``.
        private: Visibility of a newly created repo; None uses the Hub default.
            An existing repo keeps its visibility.
        token: Hub access token; None uses the saved login.
        commit_message: Message of the upload commit.
        revision: Branch to commit to; None means ``"main"``. With ``create_pr``,
            the branch the pull request targets.
        create_pr: Open a pull request instead of committing to the branch.
        license: License identifier for the model card, such as ``"cc-by-4.0"``.
        tags: Extra Hub tags for the model card.
        api: Client to use; None creates a :class:`huggingface_hub.HfApi`.

    Returns:
        The URL of the commit.

    Example:
        >>> from partialseg.nn import create_model
        >>> network = create_model("plain_unet", classes=["liver"],
        ...                        features_per_stage=[4, 8], strides=[1, 2])
        >>> push_to_hub(network, "my-org/tiny-unet", private=True)  # doctest: +SKIP
        'https://huggingface.co/my-org/tiny-unet/commit/...'
    """
    import partialseg

    if api is None:
        api = HfApi(token=token, library_name="partialseg", library_version=partialseg.__version__)
    with tempfile.TemporaryDirectory(prefix="partialseg-upload-") as tmp:
        folder = save_pretrained(network, Path(tmp) / "model", model_card=False)
        # The card is written here because its usage examples name the repo id.
        card = render_model_card(network, model_id=repo_id, license=license, tags=tags)
        (folder / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
        repo_url = api.create_repo(
            repo_id, token=token, private=private, repo_type="model", exist_ok=True
        )
        repo_id = repo_url.repo_id
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=commit_message,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
    logger.info("Uploaded %s to %s: %s", network.architecture, repo_id, commit.commit_url)
    return commit.commit_url
