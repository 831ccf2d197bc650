"""The kNN monitor on the eval split every ``every`` epochs (the end of the run has its own
final evaluation)."""

from __future__ import annotations

from unigrad.engine.callbacks.base import Callback, LoopState


class KnnMonitor(Callback):
    def __init__(self, every: int) -> None:
        self.every = every

    def on_epoch_end(self, state: LoopState) -> None:
        clock = state.clock
        if clock.epoch % self.every == 0 and state.step < state.total_steps:
            state.evaluate(False)
