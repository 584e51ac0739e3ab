"""Per-class sigmoid output heads, one set per deep-supervision level.

MultiTalent gives every class of every dataset its own output channel. The heads
of one resolution level are stored as a single 1x1(x1) convolution weight of
shape ``(num_classes, in_channels, 1, 1[, 1])``, so all classes are computed in
one fast convolution while each output channel keeps its own weights: a class
never shares a parameter with another class.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassHeads", "ClassHeadsView", "unknown_name_message"]


def unknown_name_message(kind: str, name: str, known: Sequence[str]) -> str:
    """Build an error message for an unknown name with the closest known name.

    Args:
        kind: What the name refers to, for example ``"class name"``.
        name: The name that was not found.
        known: The valid names.

    Returns:
        A message naming the value, the closest valid name (if any is similar) and
        how many valid names exist.

    Example:
        >>> unknown_name_message("class name", "livr", ["liver", "spleen"])
        "unknown class name 'livr'; did you mean 'liver'? (2 known: 'liver', 'spleen')"
    """
    matches = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {matches[0]!r}?" if matches else ""
    listed = ", ".join(repr(k) for k in list(known)[:10])
    ellipsis = ", ..." if len(known) > 10 else ""
    return f"unknown {kind} {name!r}{hint} ({len(known)} known: {listed}{ellipsis})"


def _check_names(names: Sequence[str], *, argument: str) -> list[str]:
    if isinstance(names, str):
        raise TypeError(f"{argument} must be a sequence of class names, got the string {names!r}")
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{argument} must contain non-empty strings, got {name!r}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{argument} contains duplicate class names {duplicates}")
    return names


def _conv_1x1(features: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if weight.dim() == 5:
        return F.conv3d(features, weight, bias)
    return F.conv2d(features, weight, bias)


class ClassHeads(nn.Module):
    """Independent per-class 1x1(x1) output convolutions for every resolution level.

    Args:
        in_channels: Feature channels at each deep-supervision level, highest
            resolution first.
        class_names: Output class names in channel order.
        spatial_dims: 2 for images, 3 for volumes.
        bias: Give every class head a bias term.

    Attributes:
        class_names: Output class names in channel order.
        in_channels: Feature channels per level, highest resolution first.
        weight: One parameter of shape ``(num_classes, in_channels[i], 1, 1[, 1])``
            per level.
        bias: One parameter of shape ``(num_classes,)`` per level, or None.

    Adding, removing or reordering classes replaces the parameters, so build the
    optimizer again afterwards.

    Example:
        >>> heads = ClassHeads([8, 16], ["liver", "spleen"])
        >>> features = [torch.zeros(1, 8, 4, 4, 4), torch.zeros(1, 16, 2, 2, 2)]
        >>> [tuple(out.shape) for out in heads(features)]
        [(1, 2, 4, 4, 4), (1, 2, 2, 2, 2)]
        >>> [tuple(out.shape) for out in heads(features, levels=1)]
        [(1, 2, 4, 4, 4)]
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        class_names: Sequence[str],
        *,
        spatial_dims: int = 3,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.in_channels = [int(c) for c in in_channels]
        if not self.in_channels or min(self.in_channels) < 1:
            raise ValueError(
                f"in_channels must list at least one positive channel count, got {in_channels!r}"
            )
        self.class_names = _check_names(class_names, argument="class_names")
        if not self.class_names:
            raise ValueError("class_names must contain at least one class name")
        self.spatial_dims = spatial_dims
        weights = [self._new_weight(len(self.class_names), c) for c in self.in_channels]
        self.weight = nn.ParameterList(weights)
        self.bias: nn.ParameterList | None = None
        if bias:
            biases = [self._new_bias(len(self.class_names), c) for c in self.in_channels]
            self.bias = nn.ParameterList(biases)

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.class_names)

    @property
    def num_levels(self) -> int:
        """Number of deep-supervision levels."""
        return len(self.in_channels)

    def forward(self, features: Sequence[Tensor], *, levels: int | None = None) -> list[Tensor]:
        """Compute the class logits of the first ``levels`` levels.

        Args:
            features: Feature maps, highest resolution first. Only the first
                ``levels`` entries are read.
            levels: Number of levels to compute, starting at the highest
                resolution; ``None`` computes all levels and ``1`` only the
                full-resolution logits.

        Returns:
            Logits of shape ``(batch, num_classes, *spatial)`` per level, highest
            resolution first.

        Raises:
            ValueError: If ``levels`` is out of range or too few feature maps are given.
        """
        count = self._level_count(levels, features)
        biases = self.bias if self.bias is not None else [None] * count
        return [_conv_1x1(features[i], self.weight[i], biases[i]) for i in range(count)]

    def select(self, names: Sequence[str]) -> ClassHeadsView:
        """Return a module that computes only the logits of ``names``, in that order.

        The view shares the parameters of these heads, so training through it
        updates them and later changes to these heads are visible in it, as long as
        classes are not added, removed or reordered in between.

        Args:
            names: Class names to compute.

        Returns:
            A :class:`ClassHeadsView` with the same ``forward`` signature.

        Raises:
            ValueError: If a name is unknown or repeated.

        Example:
            >>> heads = ClassHeads([4], ["liver", "spleen", "aorta"], spatial_dims=2)
            >>> view = heads.select(["aorta", "liver"])
            >>> view([torch.ones(1, 4, 3, 3)])[0].shape
            torch.Size([1, 2, 3, 3])
        """
        names = _check_names(names, argument="names")
        return ClassHeadsView(self, self._indices(names), names)

    def add_classes(self, names: Sequence[str]) -> None:
        """Append new class heads, initialised like a freshly built convolution.

        The weights of the existing classes are kept.

        Args:
            names: New class names. None of them may exist already.

        Raises:
            ValueError: If a name exists already or is repeated.
        """
        names = _check_names(names, argument="names")
        existing = sorted(set(names) & set(self.class_names))
        if existing:
            raise ValueError(f"cannot add classes {existing}: they exist already")
        count = len(names)
        for level, channels in enumerate(self.in_channels):
            old_weight = self.weight[level]
            new_weight = self._new_weight(count, channels).to(old_weight)
            self.weight[level] = nn.Parameter(torch.cat([old_weight.detach(), new_weight]))
            if self.bias is not None:
                old_bias = self.bias[level]
                new_bias = self._new_bias(count, channels).to(old_bias)
                self.bias[level] = nn.Parameter(torch.cat([old_bias.detach(), new_bias]))
        self.class_names = [*self.class_names, *names]

    def remove_classes(self, names: Sequence[str]) -> None:
        """Remove class heads, keeping the weights and order of the other classes.

        Args:
            names: Class names to remove.

        Raises:
            ValueError: If a name is unknown or repeated, or no class would remain.
        """
        names = _check_names(names, argument="names")
        self._indices(names)
        remaining = [name for name in self.class_names if name not in set(names)]
        if not remaining:
            raise ValueError("cannot remove every class; at least one class must remain")
        self._keep(remaining)

    def reorder(self, names: Sequence[str]) -> None:
        """Put the classes in the order of ``names``, keeping every class's weights.

        Args:
            names: All current class names, in the new order.

        Raises:
            ValueError: If ``names`` is not a permutation of :attr:`class_names`.
        """
        names = _check_names(names, argument="names")
        self._indices(names)
        missing = [name for name in self.class_names if name not in set(names)]
        if missing:
            raise ValueError(
                f"reorder needs every current class name; missing {missing}. "
                "Use remove_classes to drop classes."
            )
        self._keep(names)

    def extra_repr(self) -> str:
        """Summarise the levels and classes."""
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"spatial_dims={self.spatial_dims}, bias={self.bias is not None}"
        )

    def _keep(self, names: list[str]) -> None:
        index = torch.tensor(self._indices(names), device=self.weight[0].device)
        for level in range(self.num_levels):
            self.weight[level] = nn.Parameter(self.weight[level].detach()[index].clone())
            if self.bias is not None:
                self.bias[level] = nn.Parameter(self.bias[level].detach()[index].clone())
        self.class_names = list(names)

    def _indices(self, names: Sequence[str]) -> list[int]:
        positions = {name: i for i, name in enumerate(self.class_names)}
        for name in names:
            if name not in positions:
                raise ValueError(unknown_name_message("class name", name, self.class_names))
        return [positions[name] for name in names]

    def _level_count(self, levels: int | None, features: Sequence[Tensor]) -> int:
        if isinstance(features, Tensor):
            raise TypeError(
                "features must be a list of feature maps, highest resolution first, "
                f"got a single tensor of shape {tuple(features.shape)}"
            )
        available = len(features)
        count = self.num_levels if levels is None else levels
        if not 1 <= count <= self.num_levels:
            raise ValueError(f"levels must be between 1 and {self.num_levels}, got {levels!r}")
        if available < count:
            raise ValueError(
                f"{count} levels requested but only {available} feature maps were given; "
                "pass the feature maps highest resolution first"
            )
        return count

    def _new_weight(self, num_classes: int, in_channels: int) -> nn.Parameter:
        # The default initialisation of torch.nn.Conv3d: kaiming_uniform_ with
        # a=sqrt(5), which is uniform in +-1/sqrt(fan_in).
        weight = torch.empty(num_classes, in_channels, *([1] * self.spatial_dims))
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        return nn.Parameter(weight)

    def _new_bias(self, num_classes: int, in_channels: int) -> nn.Parameter:
        bound = 1.0 / math.sqrt(in_channels)
        return nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))


class ClassHeadsView(nn.Module):
    """Logits of a subset of the classes of a :class:`ClassHeads`, sharing its parameters.

    Build it with :meth:`ClassHeads.select`.

    Args:
        heads: The heads to read the parameters from.
        indices: Channel index in ``heads`` of each selected class.
        class_names: Names of the selected classes, in output order.
    """

    def __init__(self, heads: ClassHeads, indices: Sequence[int], class_names: Sequence[str]):
        super().__init__()
        self.heads = heads
        self.class_names = list(class_names)
        index = torch.as_tensor(list(indices), dtype=torch.long, device=heads.weight[0].device)
        self.register_buffer("index", index, persistent=False)

    @property
    def num_classes(self) -> int:
        """Number of selected classes."""
        return len(self.class_names)

    def forward(self, features: Sequence[Tensor], *, levels: int | None = None) -> list[Tensor]:
        """Compute the logits of the selected classes; see :meth:`ClassHeads.forward`."""
        heads = self.heads
        count = heads._level_count(levels, features)
        outputs = []
        for level in range(count):
            weight = heads.weight[level].index_select(0, self.index)
            bias = None if heads.bias is None else heads.bias[level].index_select(0, self.index)
            outputs.append(_conv_1x1(features[level], weight, bias))
        return outputs
