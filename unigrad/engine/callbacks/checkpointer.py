"""Checkpoints: every ``ckpt_every`` steps mid-epoch, at every epoch end (``epoch-NNNN.ckpt``
too with ``keep_epoch_ckpts``), and at a stop signal. SIGTERM / SIGINT are caught for the life
of the loop: the run stops at the next step boundary with a checkpoint (:class:`Interrupted`).
A checkpoint is never written with non-finite state (:meth:`Trainer.save` checks first)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unigrad.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer


class Interrupted(Exception):
    """Raised at a step boundary after SIGTERM/SIGINT, once the checkpoint is written."""

    def __init__(self, signum: int, path: Path) -> None:
        super().__init__(f"stopped by signal {signum}; checkpoint written to {path}")
        self.signum = signum


class Checkpointer(Callback):
    def __init__(self, every: int = 0, keep_epochs: bool = False) -> None:
        self.every, self.keep_epochs = every, keep_epochs
        self._old: dict[int, Any] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        def handle(signum: int, frame: Any) -> None:
            trainer.stop_signal = signum

        self._old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_step(self, trainer: Trainer, stats: dict[str, torch.Tensor], n_images: int) -> None:
        mid_epoch = trainer.step % trainer.steps_per_epoch != 0  # epoch ends save below
        if self.every and trainer.step % self.every == 0 and mid_epoch:
            trainer.save()
        if trainer.stop_signal is not None:
            raise Interrupted(trainer.stop_signal, trainer.save())

    def on_epoch_end(self, trainer: Trainer) -> None:
        trainer.save()
        if self.keep_epochs and trainer.step % trainer.steps_per_epoch == 0:
            trainer.save(f"epoch-{trainer.step // trainer.steps_per_epoch:04d}.ckpt")

    def on_fit_end(self, trainer: Trainer) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
