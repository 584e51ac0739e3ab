"""Copying saved weights into a network, exactly or class by class for fine-tuning."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from partialseg.hub.errors import WeightsMismatchError
from partialseg.nn.heads import ClassHeads

__all__ = [
    "SkippedTensor",
    "WeightTransferReport",
    "load_matching_weights",
    "transfer_weights",
]

logger = logging.getLogger(__name__)

_SHOWN_KEYS = 10


@dataclasses.dataclass(frozen=True)
class SkippedTensor:
    """A saved tensor that was not loaded because its shape differs from the network's.

    Attributes:
        key: State-dict key.
        saved_shape: Shape in the weights file.
        network_shape: Shape in the network.
    """

    key: str
    saved_shape: tuple[int, ...]
    network_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.key}: saved {self.saved_shape}, network {self.network_shape}"


@dataclasses.dataclass
class WeightTransferReport:
    """What :func:`transfer_weights` copied, initialised and skipped.

    Attributes:
        loaded: Keys copied whole from the saved weights.
        kept_classes: Classes of the network whose head rows came from the saved weights.
        new_classes: Classes of the network whose heads keep their fresh initialisation.
        dropped_classes: Saved classes that the network does not have.
        skipped: Saved tensors not loaded because their shape differs.
        missing: Network keys absent from the saved weights; they keep their
            initialisation.
        unexpected: Saved keys absent from the network; they are ignored.
    """

    loaded: list[str] = dataclasses.field(default_factory=list)
    kept_classes: list[str] = dataclasses.field(default_factory=list)
    new_classes: list[str] = dataclasses.field(default_factory=list)
    dropped_classes: list[str] = dataclasses.field(default_factory=list)
    skipped: list[SkippedTensor] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """Describe the transfer in one line.

        Example:
            >>> WeightTransferReport(loaded=["a", "b"], kept_classes=["liver"],
            ...                      new_classes=["kidney"]).summary()
            "2 tensors loaded; kept heads of 1 classes; new heads for ['kidney']; ..."
        """
        return (
            f"{len(self.loaded)} tensors loaded; kept heads of {len(self.kept_classes)} "
            f"classes; new heads for {self.new_classes}; dropped classes "
            f"{self.dropped_classes}; {len(self.skipped)} tensors skipped for a shape "
            f"mismatch; {len(self.missing)} missing keys; {len(self.unexpected)} "
            "unexpected keys"
        )


def load_matching_weights(
    network: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "the weights file",
) -> WeightTransferReport:
    """Load a state dict whose keys and shapes should equal the network's.

    Args:
        network: Network to load into.
        state_dict: Saved tensors.
        strict: Raise on any missing key, unexpected key or shape mismatch. When
            false, load the matching tensors and warn about the others.
        source: Directory or repo id, for messages.

    Returns:
        The keys loaded and those skipped.

    Raises:
        WeightsMismatchError: If ``strict`` and the keys or shapes differ.

    Example:
        >>> source, target = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> load_matching_weights(target, source.state_dict()).loaded
        ['bias', 'weight']
        >>> torch.equal(target.weight, source.weight)
        True
    """
    expected = network.state_dict()
    report = _compare_keys(expected, state_dict)
    for key in sorted(set(expected) & set(state_dict)):
        if tuple(state_dict[key].shape) == tuple(expected[key].shape):
            report.loaded.append(key)
        else:
            report.skipped.append(_skipped(key, state_dict, expected))

    if strict and (report.missing or report.unexpected or report.skipped):
        raise WeightsMismatchError(_mismatch_message(network, report, source))
    _warn_about(report, source)
    network.load_state_dict({key: state_dict[key] for key in report.loaded}, strict=False)
    return report


def transfer_weights(
    network: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source_class_names: Sequence[str],
    strict: bool = True,
    source: str = "the weights file",
) -> WeightTransferReport:
    """Load pretrained weights into a network built for other classes, to fine-tune it.

    Every tensor outside the :class:`~partialseg.nn.heads.ClassHeads` modules is
    loaded when its key and shape match. Head tensors have one row per class
    (dimension 0), so for every class of ``network`` whose full name is in
    ``source_class_names`` the saved row is copied into the class's new channel.
    Rows of the other classes keep the network's fresh initialisation. Every
    tensor skipped for a shape mismatch is reported with :func:`warnings.warn`,
    naming the key and both shapes.

    Args:
        network: Network built for the new classes.
        state_dict: Pretrained tensors.
        source_class_names: Class names of the pretrained network in channel order.
        strict: Raise when a key outside the heads is missing or unexpected. When
            false, warn instead.
        source: Directory or repo id, for messages.

    Returns:
        The report of loaded keys, kept, new and dropped classes, and skipped tensors.

    Raises:
        ValueError: If ``network`` has no ClassHeads module.
        WeightsMismatchError: If ``strict`` and a key outside the heads is missing
            or unexpected.

    Example:
        >>> from partialseg.nn import create_model
        >>> options = {"features_per_stage": [4, 8], "strides": [1, 2]}
        >>> old = create_model("plain_unet", classes=["liver", "spleen"], **options)
        >>> new = create_model("plain_unet", classes=["kidney", "liver"], **options)
        >>> report = transfer_weights(new, old.state_dict(),
        ...                           source_class_names=["liver", "spleen"])
        >>> report.kept_classes, report.new_classes, report.dropped_classes
        (['liver'], ['kidney'], ['spleen'])
        >>> torch.equal(new.heads.weight[0][1], old.heads.weight[0][0])
        True
    """
    heads = _class_heads(network)
    head_prefixes = tuple(f"{name}." for name in heads)
    source_names = list(source_class_names)
    source_index = {name: i for i, name in enumerate(source_names)}

    expected = network.state_dict()
    report = _compare_keys(expected, state_dict)
    new_state: dict[str, torch.Tensor] = {}
    for key in sorted(set(expected) & set(state_dict)):
        if key.startswith(head_prefixes):
            class_names = heads[_prefix_of(key, head_prefixes)].class_names
            rows = _head_rows(key, expected[key], state_dict[key], class_names, source_index)
            if rows is None:
                report.skipped.append(_skipped(key, state_dict, expected))
            else:
                new_state[key] = rows
        elif tuple(state_dict[key].shape) == tuple(expected[key].shape):
            new_state[key] = state_dict[key]
        else:
            report.skipped.append(_skipped(key, state_dict, expected))
    report.loaded = sorted(new_state)

    all_names = [name for module in heads.values() for name in module.class_names]
    network_names = list(dict.fromkeys(all_names))
    report.kept_classes = [name for name in network_names if name in source_index]
    report.new_classes = [name for name in network_names if name not in source_index]
    report.dropped_classes = [name for name in source_names if name not in set(network_names)]

    head_missing = [key for key in report.missing if key.startswith(head_prefixes)]
    backbone_problems = [key for key in report.missing if key not in head_missing]
    backbone_problems += report.unexpected
    if strict and backbone_problems:
        raise WeightsMismatchError(_mismatch_message(network, report, source, shapes=False))
    _warn_about(report, source)
    network.load_state_dict(new_state, strict=False)
    return report


def _class_heads(network: nn.Module) -> dict[str, ClassHeads]:
    heads = {
        name: module for name, module in network.named_modules() if isinstance(module, ClassHeads)
    }
    if not heads:
        raise ValueError(
            f"{type(network).__name__} has no ClassHeads module, so its per-class weights "
            "cannot be matched by class name; load it without classes="
        )
    return heads


def _prefix_of(key: str, prefixes: Sequence[str]) -> str:
    # The longest prefix wins, so nested head modules map to the innermost one.
    return max((prefix for prefix in prefixes if key.startswith(prefix)), key=len)[:-1]


def _head_rows(
    key: str,
    network_tensor: torch.Tensor,
    saved_tensor: torch.Tensor,
    class_names: Sequence[str],
    source_index: Mapping[str, int],
) -> torch.Tensor | None:
    """Return the network's head tensor with the rows of known classes copied, or None."""
    if saved_tensor.dim() == 0 or tuple(saved_tensor.shape[1:]) != tuple(network_tensor.shape[1:]):
        return None
    if saved_tensor.shape[0] != len(source_index) or network_tensor.shape[0] != len(class_names):
        return None
    rows = network_tensor.detach().clone()
    for new_row, name in enumerate(class_names):
        if name in source_index:
            rows[new_row] = saved_tensor[source_index[name]].to(rows.dtype)
    return rows


def _compare_keys(
    expected: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor]
) -> WeightTransferReport:
    return WeightTransferReport(
        missing=sorted(set(expected) - set(saved)),
        unexpected=sorted(set(saved) - set(expected)),
    )


def _skipped(
    key: str, saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> SkippedTensor:
    return SkippedTensor(key, tuple(saved[key].shape), tuple(expected[key].shape))


def _shown(keys: Sequence[object]) -> str:
    shown = ", ".join(str(key) for key in keys[:_SHOWN_KEYS])
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else ""
    return f"[{shown}{more}]"


def _mismatch_message(
    network: nn.Module, report: WeightTransferReport, source: str, *, shapes: bool = True
) -> str:
    name = getattr(network, "architecture", type(network).__name__)
    problems = []
    if report.missing:
        problems.append(f"missing keys {_shown(report.missing)}")
    if report.unexpected:
        problems.append(f"unexpected keys {_shown(report.unexpected)}")
    if shapes and report.skipped:
        problems.append(f"shape mismatches {_shown(report.skipped)}")
    return (
        f"the weights of {source!r} do not match the {name!r} network built from its "
        f"config.json: {'; '.join(problems)}. The weights and config.json come from "
        "different models: save the model again with save_pretrained, or pass "
        "strict=False to load only the matching tensors"
    )


def _warn_about(report: WeightTransferReport, source: str) -> None:
    for skipped in report.skipped:
        warnings.warn(
            f"skipped {skipped.key} from {source!r} because its shape differs: saved "
            f"{skipped.saved_shape}, network {skipped.network_shape}",
            stacklevel=4,
        )
    if report.missing:
        warnings.warn(
            f"{len(report.missing)} network tensors are not in {source!r} and keep their "
            f"initialisation: {_shown(report.missing)}",
            stacklevel=4,
        )
    if report.unexpected:
        warnings.warn(
            f"{len(report.unexpected)} tensors of {source!r} are not in the network and are "
            f"ignored: {_shown(report.unexpected)}",
            stacklevel=4,
        )
