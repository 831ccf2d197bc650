"""The callback interface of the training loop, and the loop state a callback sees."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unigrad.core.clock import Clock
from unigrad.errors import UserError

if TYPE_CHECKING:
    from unigrad.config import Config
    from unigrad.data.evaluation import EvalData
    from unigrad.data.pipeline import Batch, TrainData
    from unigrad.engine.parts import RunParts
    from unigrad.engine.runlog import RunLog
    from unigrad.engine.trainer import Trainer


@dataclass(kw_only=True)
class LoopState:
    """What a callback sees of the run (not the trainer): where the loop is, the latest step's
    statistics, the parts and data it may use, and the run's services.

    ``clock``: the run's position (``clock.step``: steps done; :attr:`step`; its
    ``total_steps`` is the schedules' length); ``total_steps``: the step the loop ends at
    (``max_steps`` may end it before the schedules do); ``stats``: the last
    step's statistics as device tensors (``loss``, ``pos_sim``, ...; convert them only at your
    own boundaries, so the step need not wait for the device); ``batch``: the
    :class:`~unigrad.data.pipeline.Batch` being trained on (its views and, where the data has
    them, labels); ``n_images``: the last step's global batch; ``stop_signal``: a requested
    stop (:meth:`request_stop`; the checkpointer, the last callback, stops the run at this step's
    boundary, with a checkpoint). ``log`` is the open run log (None before ``fit``);
    ``log_metrics``, ``save``, ``diverged`` and ``evaluate`` are the trainer's
    (:class:`~unigrad.engine.trainer.Trainer`).
    """

    cfg: Config
    parts: RunParts
    clock: Clock
    total_steps: int
    data: TrainData
    eval_data: EvalData | None
    device: torch.device
    out: Path
    resumed: bool
    log_metrics: Callable[[dict[str, float]], None]
    save: Callable[..., Path]
    diverged: Callable[[str, str], None]
    evaluate: Callable[[bool], dict[str, float]]
    log: RunLog | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    batch: Batch | None = None
    n_images: int = 0
    stop_signal: int | None = None

    @classmethod
    def of(cls, trainer: Trainer) -> LoopState:
        """The loop state of ``trainer`` at its current step."""
        t = trainer
        return cls(
            cfg=t.cfg, parts=t.parts, clock=t.clock, total_steps=t.total_steps, data=t.data,
            eval_data=t.eval_data, device=t.device, out=t.out,
            resumed=t.resumed_from is not None, log_metrics=t.log_metrics, save=t.save,
            diverged=t.diverged, evaluate=t.evaluate,
        )  # fmt: skip

    @property
    def step(self) -> int:
        """Steps done (``clock.step`` as an int)."""
        return int(self.clock.step)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop the run at the next step boundary, as the signal ``signum`` would."""
        self.stop_signal = signum


class Callback:
    """A periodic job of the loop; every hook is optional (the defaults do nothing).

    The loop calls, with the :class:`LoopState` (``state.step`` is the number of steps done):
    ``on_fit_start`` once; ``on_epoch_start`` before an epoch's first step (also on a resume
    mid-epoch; ``state.clock.epoch``); ``on_batch`` before every step (``state.batch``: its
    views and, where the data has them, labels); ``on_step`` after every step (``state.stats``,
    ``state.n_images``); ``on_epoch_end`` after an epoch's last step (and after the run's last
    step); ``on_fit_end`` once, also when the loop stops with an exception.

    Inside the step: :meth:`after_backward` and :meth:`after_optimizer_step`, when a callback
    defines them, run at the step's hook points (:class:`~unigrad.core.hooks.StepHooks`) with
    the step's :class:`~unigrad.core.clock.Clock`; under ``compile: step`` they are compiled
    into the step, so they must use tensor operations only (``clock.step`` is then a 0-d
    tensor) and read nothing into Python; keep a result as an attribute and read it in
    :meth:`on_step` at your own boundaries.

    State: what :meth:`state_dict` returns (None: nothing) goes into every checkpoint under
    ``callbacks/<state_key>``; a resume hands it to :meth:`load_state_dict` before
    ``on_fit_start``.
    """

    @property
    def state_key(self) -> str:
        """The name of this callback's state in the checkpoint (default: the class name)."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def on_fit_start(self, state: LoopState) -> None:
        pass

    def on_epoch_start(self, state: LoopState) -> None:
        pass

    def on_batch(self, state: LoopState) -> None:
        pass

    def on_step(self, state: LoopState) -> None:
        pass

    def on_epoch_end(self, state: LoopState) -> None:
        pass

    def on_fit_end(self, state: LoopState) -> None:
        pass

    def after_backward(self, clock: Clock) -> None:
        pass

    def after_optimizer_step(self, clock: Clock) -> None:
        pass


def step_hooks(cb: Callback) -> dict[str, Callable[[Clock], None]]:
    """The step hooks ``cb`` defines (``backward`` / ``optimizer_step`` -> its bound method)."""
    hooks = {}
    if type(cb).after_backward is not Callback.after_backward:
        hooks["backward"] = cb.after_backward
    if type(cb).after_optimizer_step is not Callback.after_optimizer_step:
        hooks["optimizer_step"] = cb.after_optimizer_step
    return hooks


def callback_states(callbacks: list[Callback]) -> dict[str, Any]:
    """The states of ``callbacks`` for a checkpoint, by :attr:`Callback.state_key`."""
    out: dict[str, Any] = {}
    for cb in callbacks:
        sd = cb.state_dict()
        if sd is not None:
            if cb.state_key in out:
                raise UserError(
                    f"two callbacks keep their state as {cb.state_key!r}; give one of them "
                    "another state_key"
                )
            out[cb.state_key] = sd
    return out


def load_callback_states(callbacks: list[Callback], checkpoint: dict[str, Any]) -> None:
    """Hand each callback its state from a checkpoint's ``callbacks`` (one without: fresh;
    before issue 42 the probe's state was the checkpoint's ``probe``)."""
    saved = dict(checkpoint.get("callbacks", {}))
    if "probe" in checkpoint:
        saved.setdefault("online_probe", checkpoint["probe"])
    for cb in callbacks:
        if cb.state_key in saved:
            cb.load_state_dict(saved[cb.state_key])
