"""Hooks that the training loop calls after each step and each epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from partialseg.training.trainer import Trainer


class Callback:
    """Hooks that :class:`Trainer` calls during training; override the ones you need.

    Both hooks run on every rank. A hook that draws random numbers changes the
    rest of the run, identically after a resume, because checkpoints are written
    after :meth:`on_epoch_end`.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_step_end(self, trainer, batch, loss):
        ...         print(f"step loss {loss:.3f}")
    """

    def on_step_end(self, trainer: Trainer, batch: dict[str, Any], loss: float) -> None:
        """Run after each optimizer step, with the batch it trained on and the loss value."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Run after each epoch, before the model and checkpoint are written."""
