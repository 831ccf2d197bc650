"""Where a run is: the step, and the lengths that turn it into epochs and progress.

One :class:`Clock` per training step is what a term, a method's hooks and the loop's callbacks
see of the run's position, so a schedule by epoch ("freeze the prototypes for the first epoch",
"warm the teacher temperature up over 30 epochs") is written where it is used. ``step`` is a
Python int in the eager step and a 0-d int64 tensor under ``compile: step`` (so a compiled graph
does not specialise on it); ``epoch`` and ``progress`` follow its type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Clock"]


@dataclass(frozen=True)
class Clock:
    """The run's position: ``step`` (0-based global step: int, or a 0-d int64 tensor),
    ``steps_per_epoch`` and ``total_steps`` (Python ints, fixed for a run)."""

    step: int | torch.Tensor = 0
    steps_per_epoch: int = 1
    total_steps: int = 1

    @property
    def epoch(self) -> int | torch.Tensor:
        """0-based epoch of ``step`` (same type as ``step``)."""
        return self.step // self.steps_per_epoch

    @property
    def progress(self) -> float | torch.Tensor:
        """Fraction of the run done before this step, in [0, 1)."""
        return self.step / max(1, self.total_steps)

    def at(self, step: int | torch.Tensor) -> Clock:
        """This clock at another step."""
        return Clock(step, self.steps_per_epoch, self.total_steps)
