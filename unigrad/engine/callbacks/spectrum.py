"""F's eigenvalues at the end of every epoch, to ``RUN/spectrum.csv`` (methods whose sample set
is the EMA correlation matrix: UniGrad, DirectPred)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unigrad.core import dist
from unigrad.engine.callbacks.base import Callback, LoopState

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer


class SpectrumWriter(Callback):
    @staticmethod
    def applies(trainer: Trainer) -> bool:
        return getattr(trainer.objective, "corr", None) is not None

    def on_epoch_end(self, state: LoopState) -> None:
        if dist.is_main():
            from unigrad.eval.diagnostics import corr_spectrum, write_spectrum

            write_spectrum(state.out, state.step, corr_spectrum(state.parts.objective.corr.F))
