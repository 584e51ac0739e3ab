"""The two optimizers of the MultiTalent fine-tuning recipe."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

HEADS_PREFIX = "heads."
PHASES = ("heads", "warmup", "poly")
PUBLISHED_HEAD_LR = 5e-4
PUBLISHED_BASE_LR = 1e-2


@dataclasses.dataclass
class FineTuningOptimizers:
    """The two optimizers of the MultiTalent fine-tuning recipe.

    Attributes:
        model: The network, whose heads are the parameters named ``heads.*``.
        heads: AdamW (amsgrad) over the head parameters, used in the "heads" phase.
        network: SGD with Nesterov momentum over all parameters, used afterwards.

    Example:
        >>> from torch import nn
        >>> model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "heads": nn.Linear(2, 1)})
        >>> optimizers = build_finetuning_optimizers(model)
        >>> type(optimizers.optimizer_for("poly")).__name__
        'SGD'
    """

    model: nn.Module
    heads: torch.optim.Optimizer
    network: torch.optim.Optimizer

    def optimizer_for(self, phase: str) -> torch.optim.Optimizer:
        """Return the optimizer to step in ``phase``.

        Args:
            phase: "heads", "warmup" or "poly".

        Returns:
            ``heads`` for the "heads" phase, else ``network``.

        Raises:
            ValueError: If the phase is unknown.

        Example:
            >>> from torch import nn
            >>> model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "heads": nn.Linear(2, 1)})
            >>> optimizers = build_finetuning_optimizers(model)
            >>> type(optimizers.optimizer_for("heads")).__name__
            'AdamW'
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        return self.heads if phase == "heads" else self.network

    def state_dict(self) -> dict[str, Any]:
        """Return the state of both optimizers for a checkpoint.

        Example:
            >>> from torch import nn
            >>> model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "heads": nn.Linear(2, 1)})
            >>> sorted(build_finetuning_optimizers(model).state_dict())
            ['heads', 'network']
        """
        return {"heads": self.heads.state_dict(), "network": self.network.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict`.

        Args:
            state: Output of :meth:`state_dict`.

        Example:
            >>> from torch import nn
            >>> model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "heads": nn.Linear(2, 1)})
            >>> saved = build_finetuning_optimizers(model).state_dict()
            >>> build_finetuning_optimizers(model).load_state_dict(saved)
        """
        self.heads.load_state_dict(state["heads"])
        self.network.load_state_dict(state["network"])


def head_parameters(model: nn.Module, *, heads_prefix: str = HEADS_PREFIX) -> list[nn.Parameter]:
    """Return the parameters whose name starts with ``heads_prefix``.

    Args:
        model: The network.
        heads_prefix: Name prefix of the head parameters.

    Returns:
        The head parameters.

    Raises:
        ValueError: If no parameter has the prefix.

    Example:
        >>> from torch import nn
        >>> model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "heads": nn.Linear(2, 1)})
        >>> [p.shape for p in head_parameters(model)]
        [torch.Size([1, 2]), torch.Size([1])]
    """
    parameters = [p for n, p in model.named_parameters() if n.startswith(heads_prefix)]
    if not parameters:
        names = [n for n, _ in model.named_parameters()][:5]
        raise ValueError(
            f"no parameter name starts with {heads_prefix!r} (first names: {names}); put the "
            "output heads in a submodule named 'heads' or pass heads_prefix"
        )
    return parameters


def build_finetuning_optimizers(
    model: nn.Module,
    *,
    heads_prefix: str = HEADS_PREFIX,
    weight_decay: float = 3e-5,
    momentum: float = 0.99,
) -> FineTuningOptimizers:
    """Build the optimizers of the MultiTalent fine-tuning recipe.

    As in Ulrich et al., MICCAI 2023, the heads phase trains the heads with AdamW
    (amsgrad, weight decay 3e-5). The later phases train the whole network with
    SGD (Nesterov momentum 0.99, weight decay 3e-5).
    :meth:`partialseg.schedules.WarmupSchedule.apply` sets the learning rate of both.

    Args:
        model: The network.
        heads_prefix: Name prefix of the head parameters.
        weight_decay: Weight decay of both optimizers.
        momentum: SGD momentum.

    Returns:
        The two optimizers.

    Raises:
        ValueError: If the model has no head parameters.

    Example:
        >>> from torch import nn
        >>> model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "heads": nn.Linear(2, 1)})
        >>> optimizers = build_finetuning_optimizers(model)
        >>> optimizers.network.defaults["nesterov"], optimizers.heads.defaults["amsgrad"]
        (True, True)
    """
    heads = torch.optim.AdamW(
        head_parameters(model, heads_prefix=heads_prefix),
        lr=PUBLISHED_HEAD_LR,
        weight_decay=weight_decay,
        amsgrad=True,
    )
    network = torch.optim.SGD(
        model.parameters(),
        lr=PUBLISHED_BASE_LR,
        momentum=momentum,
        nesterov=True,
        weight_decay=weight_decay,
    )
    return FineTuningOptimizers(model=model, heads=heads, network=network)
