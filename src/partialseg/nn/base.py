"""Base class shared by every partialseg segmentation network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from pathlib import Path

    from partialseg.data.preprocessing import Preprocessing
    from partialseg.labels.registry import LabelRegistry
    from partialseg.nn.heads import ClassHeads, ClassHeadsView


class SegmentationNetwork(nn.Module):
    """A network whose outputs are one sigmoid logit channel per class.

    Subclasses build their layers in ``__init__`` and call
    ``super().__init__(architecture=..., model_args=..., class_names=...)``. The
    ``architecture`` is the name the network is registered under in
    :func:`partialseg.create_model`, and ``model_args`` are the JSON-serialisable
    keyword arguments that rebuild the same topology with ``create_model``.

    Attributes:
        architecture: Registered model name.
        model_args: Keyword arguments of ``create_model`` other than ``classes``.
        class_names: Output class names in channel order.
        deep_supervision: When true, ``forward`` returns a list of logits, highest
            resolution first; when false, only the full-resolution logits tensor.
        label_registry: The label registry the network was trained with, if known.
        preprocessing: Spacing, patch size and intensity normalisation, if known.
    """

    def __init__(
        self,
        *,
        architecture: str,
        model_args: dict[str, Any],
        class_names: list[str],
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.architecture = architecture
        self.model_args = dict(model_args)
        self.class_names = list(class_names)
        self.deep_supervision = deep_supervision
        self.label_registry: LabelRegistry | None = None
        self.preprocessing: Preprocessing | None = None

    @property
    def class_names(self) -> list[str]:
        """Output class names in channel order, read from ``self.heads`` once it exists."""
        heads = self._modules.get("heads")
        if heads is not None:
            return list(heads.class_names)
        return list(self._class_names)

    @class_names.setter
    def class_names(self, names: Sequence[str]) -> None:
        self._class_names = list(names)

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.class_names)

    def add_classes(self, names: Sequence[str]) -> None:
        """Append freshly initialised output heads; see :meth:`ClassHeads.add_classes`.

        The parameters of the heads are replaced, so build the optimizer again.
        """
        self._class_heads().add_classes(names)

    def remove_classes(self, names: Sequence[str]) -> None:
        """Remove output heads; see :meth:`ClassHeads.remove_classes`."""
        self._class_heads().remove_classes(names)

    def reorder_classes(self, names: Sequence[str]) -> None:
        """Reorder the output heads; see :meth:`ClassHeads.reorder`."""
        self._class_heads().reorder(names)

    def select_classes(self, names: Sequence[str]) -> ClassHeadsView:
        """Return a view of the heads computing only ``names``; see :meth:`ClassHeads.select`."""
        return self._class_heads().select(names)

    def _class_heads(self) -> ClassHeads:
        heads = self._modules.get("heads")
        if heads is None:
            raise TypeError(
                f"{type(self).__name__} has no ClassHeads module named 'heads', "
                "so its classes cannot be edited"
            )
        return heads

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``.

        See :func:`partialseg.hub.save_pretrained` for the arguments.
        """
        from partialseg.hub import save_pretrained

        return save_pretrained(self, directory, **kwargs)

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | Path, **kwargs: Any) -> SegmentationNetwork:
        """Load a network saved with :meth:`save_pretrained` or pushed to the Hub.

        See :func:`partialseg.hub.from_pretrained` for the arguments.
        """
        from partialseg.hub import from_pretrained

        return from_pretrained(repo_id_or_path, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the network to the Hugging Face Hub.

        See :func:`partialseg.hub.push_to_hub` for the arguments.
        """
        from partialseg.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)
