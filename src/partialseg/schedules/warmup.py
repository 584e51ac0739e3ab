"""Fine-tuning schedule: head-only warm-up, whole-network warm-up, then poly decay."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
from torch import nn

from partialseg.schedules.optimizers import (
    HEADS_PREFIX,
    PUBLISHED_BASE_LR,
    PUBLISHED_HEAD_LR,
    FineTuningOptimizers,
    head_parameters,
)

logger = logging.getLogger(__name__)

Phase = Literal["heads", "warmup", "poly"]


def poly_lr(epoch: int, *, base_lr: float, max_epochs: int, exponent: float = 0.9) -> float:
    """Return the poly learning rate ``base_lr * (1 - epoch / max_epochs) ** exponent``.

    This is the nnU-Net and MultiTalent decay. Epochs at or past ``max_epochs`` get 0.

    Args:
        epoch: Epoch counted from the start of the decay, from 0.
        base_lr: Learning rate at epoch 0.
        max_epochs: Length of the decay in epochs.
        exponent: Poly exponent.

    Returns:
        The learning rate.

    Example:
        >>> poly_lr(0, base_lr=1e-2, max_epochs=1000)
        0.01
        >>> round(poly_lr(500, base_lr=1e-2, max_epochs=1000), 6)
        0.005359
    """
    progress = min(max(epoch, 0), max_epochs) / max_epochs
    return base_lr * (1 - progress) ** exponent


class WarmupSchedule:
    """Learning rate and trainable parameters for fine-tuning a pretrained network.

    The MultiTalent fine-tuning schedule (Ulrich et al., MICCAI 2023), which
    follows the linear-probing-then-fine-tuning idea of Kumar et al., ICLR 2022,
    has three phases, counted in epochs from 0:

    1. "heads", ``head_epochs`` epochs: only the heads train, with a learning
       rate rising linearly to ``head_lr``: ``head_lr * (epoch + 1) / head_epochs``.
    2. "warmup", ``warmup_epochs`` epochs: the whole network trains, with a
       learning rate rising linearly to ``base_lr`` the same way.
    3. "poly", ``poly_epochs`` epochs: ``base_lr * (1 - k / poly_epochs) ** 0.9``
       at epoch k of the phase, and 0 after its end.

    Each ramp reaches its peak in the last epoch of its phase and never uses a
    learning rate of 0. The defaults are the published ones: 10 head epochs to
    5e-4, 50 warm-up epochs to 1e-2 and poly decay over 1000 epochs. With
    ``head_epochs=0`` and ``warmup_epochs=0`` it is the plain poly schedule of
    multi-dataset training.

    Like timm's schedulers, the object can be bound to a target and driven with
    :meth:`step`, and it has :meth:`state_dict` and :meth:`load_state_dict`.

    Args:
        target: Optional model, optimizer or :class:`FineTuningOptimizers` that
            :meth:`step` applies to.
        head_epochs: Length of the heads phase.
        head_lr: Peak learning rate of the heads phase.
        warmup_epochs: Length of the whole-network warm-up.
        base_lr: Peak learning rate of the warm-up and start of the poly decay.
        poly_epochs: Length of the poly decay.
        poly_exponent: Exponent of the poly decay.
        heads_prefix: Name prefix of the head parameters, which stay trainable in
            the heads phase.

    Raises:
        ValueError: If an epoch count is negative, ``poly_epochs`` is 0 or a
            learning rate is not positive.

    Example:
        >>> schedule = WarmupSchedule()
        >>> [schedule.phase_at(e) for e in (0, 9, 10, 59, 60)]
        ['heads', 'heads', 'warmup', 'warmup', 'poly']
        >>> [schedule.lr_at(e) for e in (0, 9, 10, 59, 60)]
        [5e-05, 0.0005, 0.0002, 0.01, 0.01]
    """

    def __init__(
        self,
        target: Any = None,
        *,
        head_epochs: int = 10,
        head_lr: float = PUBLISHED_HEAD_LR,
        warmup_epochs: int = 50,
        base_lr: float = PUBLISHED_BASE_LR,
        poly_epochs: int = 1000,
        poly_exponent: float = 0.9,
        heads_prefix: str = HEADS_PREFIX,
    ) -> None:
        for name, value in (("head_epochs", head_epochs), ("warmup_epochs", warmup_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if isinstance(poly_epochs, bool) or not isinstance(poly_epochs, int) or poly_epochs < 1:
            raise ValueError(f"poly_epochs must be a positive int, got {poly_epochs!r}")
        for name, value in (
            ("head_lr", head_lr),
            ("base_lr", base_lr),
            ("poly_exponent", poly_exponent),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.target = target
        self.head_epochs = head_epochs
        self.head_lr = float(head_lr)
        self.warmup_epochs = warmup_epochs
        self.base_lr = float(base_lr)
        self.poly_epochs = poly_epochs
        self.poly_exponent = float(poly_exponent)
        self.heads_prefix = heads_prefix
        self.last_epoch: int | None = None
        self._frozen: set[str] = set()

    @property
    def total_epochs(self) -> int:
        """Number of epochs of all three phases."""
        return self.head_epochs + self.warmup_epochs + self.poly_epochs

    def phase_at(self, epoch: int) -> Phase:
        """Return the phase of ``epoch``: "heads", "warmup" or "poly".

        Epochs after the end of the schedule are in the "poly" phase.

        Args:
            epoch: Epoch, from 0.

        Returns:
            The phase name.

        Raises:
            ValueError: If ``epoch`` is negative.

        Example:
            >>> WarmupSchedule(head_epochs=2, warmup_epochs=0).phase_at(2)
            'poly'
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        if epoch < self.head_epochs:
            return "heads"
        if epoch < self.head_epochs + self.warmup_epochs:
            return "warmup"
        return "poly"

    def lr_at(self, epoch: int) -> float:
        """Return the learning rate of ``epoch``.

        Args:
            epoch: Epoch, from 0.

        Returns:
            The learning rate.

        Raises:
            ValueError: If ``epoch`` is negative.

        Example:
            >>> schedule = WarmupSchedule()
            >>> schedule.lr_at(1059) > 0, schedule.lr_at(1060)
            (True, 0.0)
        """
        phase = self.phase_at(epoch)
        if phase == "heads":
            return self.head_lr * (epoch + 1) / self.head_epochs
        if phase == "warmup":
            return self.base_lr * (epoch - self.head_epochs + 1) / self.warmup_epochs
        start = self.head_epochs + self.warmup_epochs
        return poly_lr(
            epoch - start,
            base_lr=self.base_lr,
            max_epochs=self.poly_epochs,
            exponent=self.poly_exponent,
        )

    def apply(self, target: Any, epoch: int) -> Phase:
        """Set the learning rate and the trainable parameters for ``epoch``.

        - An optimizer gets ``lr_at(epoch)`` in every parameter group.
        - A model gets ``requires_grad=False`` on every parameter outside the
          heads in the "heads" phase. Afterwards the parameters that this
          schedule froze become trainable again, but parameters that were
          already frozen stay frozen.
        - A :class:`FineTuningOptimizers` gets both: the learning rate of both
          optimizers and the freezing of its model. Step
          ``optimizers.optimizer_for(phase)`` during the epoch.

        Only ``requires_grad`` changes: normalisation layers of a frozen backbone
        still update running statistics in training mode.

        Args:
            target: A ``torch.nn.Module``, a ``torch.optim.Optimizer`` or a
                :class:`FineTuningOptimizers`.
            epoch: Epoch, from 0.

        Returns:
            The phase of ``epoch``.

        Raises:
            TypeError: If ``target`` is not a module, an optimizer or a
                :class:`FineTuningOptimizers`.
            ValueError: If the model has no head parameters in the heads phase.

        Example:
            >>> from torch import nn
            >>> from partialseg.schedules import build_finetuning_optimizers
            >>> model = nn.ModuleDict({"encoder": nn.Linear(2, 2), "heads": nn.Linear(2, 1)})
            >>> optimizers = build_finetuning_optimizers(model)
            >>> schedule = WarmupSchedule()
            >>> schedule.apply(optimizers, 0)
            'heads'
            >>> model["encoder"].weight.requires_grad, optimizers.heads.param_groups[0]["lr"]
            (False, 5e-05)
            >>> schedule.apply(optimizers, 10), model["encoder"].weight.requires_grad
            ('warmup', True)
        """
        phase = self.phase_at(epoch)
        if isinstance(target, FineTuningOptimizers):
            self._set_lr(target.heads, epoch)
            self._set_lr(target.network, epoch)
            self._set_trainable(target.model, phase)
        elif isinstance(target, torch.optim.Optimizer):
            self._set_lr(target, epoch)
        elif isinstance(target, nn.Module):
            self._set_trainable(target, phase)
        else:
            raise TypeError(
                "target must be a torch.nn.Module, a torch.optim.Optimizer or "
                f"FineTuningOptimizers, got {type(target).__name__}"
            )
        if self.last_epoch is None or self.phase_at(self.last_epoch) != phase:
            logger.info("Epoch %d starts the %r phase, lr %.3g", epoch, phase, self.lr_at(epoch))
        self.last_epoch = epoch
        return phase

    def step(self, epoch: int) -> Phase:
        """Apply ``epoch`` to the target given to the constructor.

        Call it at the start of each epoch with that epoch, or, as with timm's
        schedulers, at the end of each epoch with the next one.

        Args:
            epoch: Epoch, from 0.

        Returns:
            The phase of ``epoch``.

        Raises:
            ValueError: If no target was given to the constructor.

        Example:
            >>> import torch
            >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            >>> schedule = WarmupSchedule(optimizer, head_epochs=0, warmup_epochs=0)
            >>> schedule.step(0), optimizer.param_groups[0]["lr"]
            ('poly', 0.01)
        """
        if self.target is None:
            raise ValueError(
                "step() needs the target given to the constructor; pass "
                "WarmupSchedule(optimizer_or_model, ...) or call apply(target, epoch)"
            )
        return self.apply(self.target, epoch)

    def state_dict(self) -> dict[str, Any]:
        """Return the schedule's settings and progress for a checkpoint.

        Example:
            >>> WarmupSchedule(poly_epochs=500).state_dict()["poly_epochs"]
            500
        """
        return {
            "head_epochs": self.head_epochs,
            "head_lr": self.head_lr,
            "warmup_epochs": self.warmup_epochs,
            "base_lr": self.base_lr,
            "poly_epochs": self.poly_epochs,
            "poly_exponent": self.poly_exponent,
            "heads_prefix": self.heads_prefix,
            "last_epoch": self.last_epoch,
            "frozen": sorted(self._frozen),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict`.

        Call :meth:`apply` afterwards to set the learning rate and the frozen
        parameters of the resumed epoch.

        Args:
            state: Output of :meth:`state_dict`.

        Example:
            >>> saved = WarmupSchedule(poly_epochs=500).state_dict()
            >>> schedule = WarmupSchedule()
            >>> schedule.load_state_dict(saved)
            >>> schedule.total_epochs
            560
        """
        for key in (
            "head_epochs",
            "head_lr",
            "warmup_epochs",
            "base_lr",
            "poly_epochs",
            "poly_exponent",
            "heads_prefix",
            "last_epoch",
        ):
            setattr(self, key, state[key])
        self._frozen = set(state["frozen"])

    def _set_lr(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        lr = self.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def _set_trainable(self, model: nn.Module, phase: Phase) -> None:
        if phase == "heads":
            head_parameters(model, heads_prefix=self.heads_prefix)
            for name, parameter in model.named_parameters():
                if not name.startswith(self.heads_prefix) and parameter.requires_grad:
                    parameter.requires_grad_(False)
                    self._frozen.add(name)
            return
        if self._frozen:
            for name, parameter in model.named_parameters():
                if name in self._frozen:
                    parameter.requires_grad_(True)
            self._frozen.clear()
