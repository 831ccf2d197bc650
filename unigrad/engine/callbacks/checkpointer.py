"""Checkpoints: every ``ckpt_every`` steps mid-epoch, at every epoch end (``epoch-NNNN.ckpt``
too with ``keep_epoch_ckpts``), and at a stop signal. SIGTERM / SIGINT are caught for the life
of the loop: the run stops at the next step boundary with a checkpoint (:class:`Interrupted`).
A checkpoint is never written with non-finite state (:meth:`Trainer.save` checks first).

In a distributed run each rank catches its own signal, possibly at different steps (a scheduler
signals the nodes one by one), and a rank that stopped alone would leave the others waiting in
the step's collectives. So the ranks agree on a stop at log boundaries (every ``log_every``
steps): one all-reduce (max) of the caught signal number, where the metrics are read from the
device anyway, so the step gains no host sync; all ranks stop at the same step with one
checkpoint, at most ``log_every`` steps after the signal. A per-step agreement would stop one
step sooner but add a collective and a host read to every step."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unigrad.core import dist
from unigrad.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer


class Interrupted(Exception):
    """Raised at a step boundary after SIGTERM/SIGINT, once the checkpoint is written."""

    def __init__(self, signum: int, path: Path) -> None:
        super().__init__(f"stopped by signal {signum}; checkpoint written to {path}")
        self.signum = signum


class Checkpointer(Callback):
    """``every``: steps between mid-epoch checkpoints (0: epoch ends only); ``keep_epochs``: keep
    ``epoch-NNNN.ckpt``; ``agree_every``: steps between the ranks' agreements on a stop."""

    def __init__(self, every: int = 0, keep_epochs: bool = False, agree_every: int = 1) -> None:
        self.every, self.keep_epochs, self.agree_every = every, keep_epochs, agree_every
        self._old: dict[int, Any] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        def handle(signum: int, frame: Any) -> None:
            trainer.stop_signal = signum

        self._old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_step(self, trainer: Trainer, stats: dict[str, torch.Tensor], n_images: int) -> None:
        mid_epoch = trainer.step % trainer.steps_per_epoch != 0  # epoch ends save below
        saved = None
        if self.every and trainer.step % self.every == 0 and mid_epoch:
            saved = trainer.save()
        signum = self.stop_signal(trainer)
        if signum:
            raise Interrupted(signum, saved or trainer.save())

    def stop_signal(self, trainer: Trainer) -> int | None:
        """The signal to stop on now: the caught one alone; in a distributed run the largest any
        rank caught, agreed at every ``agree_every``-th step (None in between)."""
        if not dist.is_dist():
            return trainer.stop_signal
        if trainer.step % self.agree_every:
            return None
        return dist.any_rank(trainer.stop_signal or 0) or None

    def on_epoch_end(self, trainer: Trainer) -> None:
        trainer.save()
        if self.keep_epochs and trainer.step % trainer.steps_per_epoch == 0:
            trainer.save(f"epoch-{trainer.step // trainer.steps_per_epoch:04d}.ckpt")

    def on_fit_end(self, trainer: Trainer) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
