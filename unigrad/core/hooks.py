"""Actions a method (or the run's settings) asks the step to take at two fixed points: after
``backward()`` (cancel a layer's gradient, clip) and after the optimiser step (renormalise
prototypes). The step calls :meth:`StepHooks.after_backward` and
:meth:`StepHooks.after_optimizer_step` in both its eager and its compiled form, so an action
must be written with tensor operations only (``clock.step`` may be a 0-d tensor) and must not
read a tensor into Python.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unigrad.core.clock import Clock

__all__ = ["Action", "Bound", "StepHooks"]

#: one action: called with the step's :class:`Clock`
Action = Callable[[Clock], None]


class Bound:
    """The action ``make(*args)`` (e.g. a method's action factory and its
    :class:`~unigrad.core.needs.HookContext`), made again from deep copies of ``args`` when it
    is deep-copied: a copy of the run's parts (``compile: auto``'s measurement) then acts on the
    copied modules, never on the run's own (a closure would keep the originals)."""

    def __init__(self, make: Callable[..., Action], *args: Any) -> None:
        self.make, self.args = make, args
        self.action = make(*args)

    def __call__(self, clock: Clock) -> None:
        self.action(clock)

    def __deepcopy__(self, memo: dict[int, Any]) -> Bound:
        return Bound(self.make, *copy.deepcopy(self.args, memo))


@dataclass
class StepHooks:
    """The actions of one run at the step's two hook points, in the order they were added."""

    backward: list[Action] = field(default_factory=list)
    optimizer_step: list[Action] = field(default_factory=list)

    def after_backward(self, clock: Clock) -> None:
        """After the gradients exist, before the optimiser reads them."""
        for action in self.backward:
            action(clock)

    def after_optimizer_step(self, clock: Clock) -> None:
        """After the optimiser changed the parameters, before the EMA update."""
        for action in self.optimizer_step:
            action(clock)
