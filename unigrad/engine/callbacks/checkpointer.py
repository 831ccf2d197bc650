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
from typing import Any

from unigrad.core import dist
from unigrad.engine.callbacks.base import Callback, LoopState


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

    def on_fit_start(self, state: LoopState) -> None:
        def handle(signum: int, frame: Any) -> None:
            state.request_stop(signum)

        self._old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_step(self, state: LoopState) -> None:
        mid_epoch = state.step % state.clock.steps_per_epoch != 0  # epoch ends save below
        saved = None
        if self.every and state.step % self.every == 0 and mid_epoch:
            saved = state.save()
        signum = self.stop_signal(state)
        if signum:
            raise Interrupted(signum, saved or state.save())

    def stop_signal(self, state: LoopState) -> int | None:
        """The signal to stop on now: the requested one alone; in a distributed run the largest
        any rank requested, agreed at every ``agree_every``-th step (None in between)."""
        if not dist.is_dist():
            return state.stop_signal
        if state.step % self.agree_every:
            return None
        return dist.any_rank(state.stop_signal or 0) or None

    def on_epoch_end(self, state: LoopState) -> None:
        state.save()
        spe = state.clock.steps_per_epoch
        if self.keep_epochs and state.step % spe == 0:
            state.save(f"epoch-{state.step // spe:04d}.ckpt")

    def on_fit_end(self, state: LoopState) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
