"""The kNN monitor on the eval split every ``every`` epochs (the end of the run has its own
final evaluation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unigrad.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer


class KnnMonitor(Callback):
    def __init__(self, every: int) -> None:
        self.every = every

    def on_epoch_end(self, trainer: Trainer) -> None:
        epoch = trainer.step // trainer.steps_per_epoch
        if epoch % self.every == 0 and trainer.step < trainer.total_steps:
            trainer.evaluate(final=False)
