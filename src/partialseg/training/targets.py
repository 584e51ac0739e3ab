"""Turning a batch of label maps into per-class targets and the annotated mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from partialseg.labels import LabelRegistry


class PartialTargets:
    """Targets of the MultiTalent setting: each dataset's classes are separate outputs.

    Args:
        registry: The label registry of the training collection.

    Example:
        >>> registry = LabelRegistry()
        >>> registry.add_dataset("A", {"liver": [1]})
        >>> registry.add_dataset("B", {"spleen": [1]})
        >>> targets, annotated = PartialTargets(registry)(torch.ones(1, 2, 2, 2), ["B"])
        >>> targets[0, :, 0, 0, 0].tolist(), annotated.tolist()
        ([0, 1], [[False, True]])
    """

    def __init__(self, registry: LabelRegistry) -> None:
        self.registry = registry
        self.class_names = list(registry.class_names)

    def __call__(
        self, label_maps: torch.Tensor, dataset_names: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(targets (B, C, *spatial), annotated (B, C))`` for a batch."""
        targets = self.registry.encode_batch(label_maps.long(), list(dataset_names))
        annotated = self.registry.annotated_mask(list(dataset_names))
        return targets, annotated


class NaiveMergeTargets:
    """Targets of the naive merge: classes with the same name are one output.

    Every class counts for every sample, so a class that a sample's dataset does
    not annotate is treated as background. This is the baseline that MultiTalent
    is compared with; it teaches the network to miss unannotated organs.

    Args:
        registry: The label registry of the training collection.

    Example:
        >>> registry = LabelRegistry()
        >>> registry.add_dataset("A", {"liver": [1]})
        >>> registry.add_dataset("B", {"liver": [2], "spleen": [1]})
        >>> merge = NaiveMergeTargets(registry)
        >>> merge.class_names
        ['merged/liver', 'merged/spleen']
        >>> targets, annotated = merge(torch.ones(1, 2, 2, 2), ["A"])
        >>> targets[0, :, 0, 0, 0].tolist(), annotated.tolist()
        ([1, 0], [[True, True]])
    """

    dataset_name = "merged"

    def __init__(self, registry: LabelRegistry) -> None:
        self.registry = registry
        merged: list[str] = []
        for full_name in registry.class_names:
            bare = full_name.split("/", 1)[1]
            if bare not in merged:
                merged.append(bare)
        self.class_names = [f"{self.dataset_name}/{name}" for name in merged]
        # gather_index[c_merged] picks the registry channel of the same name; the
        # extra zero channel appended in __call__ stands for "not annotated here".
        self._source_channel = {}
        for dataset in registry.dataset_names:
            index = []
            for name in merged:
                full_name = f"{dataset}/{name}"
                channel = (
                    registry.class_names.index(full_name)
                    if full_name in registry.class_names
                    else -1
                )
                index.append(channel)
            self._source_channel[dataset] = index

    def __call__(
        self, label_maps: torch.Tensor, dataset_names: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(targets (B, C_merged, *spatial), annotated)`` with every class annotated."""
        partial = self.registry.encode_batch(label_maps.long(), list(dataset_names))
        padded = torch.cat([partial, torch.zeros_like(partial[:, :1])], dim=1)
        index = torch.tensor([self._source_channel[name] for name in dataset_names])
        index = torch.where(index < 0, partial.shape[1], index)
        view = (*index.shape, *([1] * (partial.dim() - 2)))
        gather_index = index.view(view).expand(-1, -1, *partial.shape[2:])
        targets = torch.gather(padded, 1, gather_index)
        annotated = torch.ones(len(dataset_names), len(self.class_names), dtype=torch.bool)
        return targets, annotated
