"""One optimisation step, written once: views -> online and target forward -> objective ->
backward -> hooks after backward -> optimiser -> hooks after the optimiser step -> EMA update ->
sample-set update (paper eq. 13's surrogate for the gradient forms).

The step is two functions and the code around them: :func:`forward_objective` (the forward
passes and the objective, with its sample-set statistics) and :func:`update` (the optimiser
step, the actions after it, the target's EMA); between them ``backward()`` and the actions after
backward (``parts.hooks``: gradient clipping, the loss parts' gradient averaging across ranks,
a method's own), eager in both forms. :class:`Step` runs them as they are (the
eager step, :data:`train_step`); :class:`unigrad.engine.compiled.CompiledStep` is the same
:class:`Step` with the two functions compiled and its schedules entering as 0-d tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from unigrad.core.clock import Clock
from unigrad.core.objective import Mix
from unigrad.engine.cutmix import cutmix as mix_views
from unigrad.engine.optim import set_lr
from unigrad.engine.parts import RunParts
from unigrad.engine.profiling import NullTimer, section

Stats = dict[str, torch.Tensor]


def mixed_views(
    views: list[torch.Tensor], gen: torch.Generator, cutmix: bool, timer: NullTimer
) -> tuple[list[torch.Tensor], Mix | None]:
    """The online branch's views: CutMix of ``views`` drawn from ``gen`` (on its device), or
    the views."""
    if not cutmix:
        return views, None
    with timer("cutmix"):
        online_views, perm, ratio = mix_views(views, gen)
    return online_views, Mix(perm, ratio)


def forward_objective(
    parts: RunParts,
    online_views: list[torch.Tensor],
    views: list[torch.Tensor],
    mix: Mix | None,
    clock: Clock,
    n_target: int,
    timer: NullTimer | None = None,
) -> tuple[torch.Tensor, Stats]:
    """The step's forward region: the online network on ``online_views`` (CutMix applied),
    the target branch on the first ``n_target`` of ``views`` (unmixed), the objective with its
    sample-set updates (F, the bank's staged keys), under the run's autocast.

    Views are [B, 3, H_i, W_i], global first. Returns the loss (0-d; eq. 13's surrogate
    ``(g.detach() * u1).sum(-1).mean()`` for a gradient form) and the objective's statistics
    (0-d device tensors). ``timer``: per-section timing (None: none, as when traced).
    """
    with torch.autocast(views[0].device.type, dtype=parts.amp or torch.float32,
                        enabled=parts.amp is not None):  # fmt: skip
        with section(timer, "online forward"):
            z, pred = parts.net(online_views)
        with section(timer, "target forward"):
            targets = parts.target(views[:n_target], z[:n_target])
        with section(timer, "loss + sample set"):
            loss = parts.objective(z, targets=targets, pred=pred, mix=mix, step=clock)
            stats = dict(parts.objective.stats)
    return loss, stats


def update(
    parts: RunParts,
    clock: Clock,
    ema_weight: float | torch.Tensor | None,
    timer: NullTimer | None = None,
) -> None:
    """The step's update region, after ``backward()`` and the actions after it: the optimiser
    step (through the float16 loss scaler when it is on), the actions after the optimiser step
    (``parts.hooks``), then the target's EMA ``theta_t <- theta_t + w (theta_o - theta_t)``
    with ``w = ema_weight = 1 - m`` (None: the target has no EMA) and the same step for the
    objective's teacher copies (:meth:`~unigrad.core.objective.Objective.follow_target_`; w = 1
    without an EMA)."""
    with section(timer, "optimizer"):
        if parts.scaler.is_enabled():
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            parts.optimizer.step()
        parts.hooks.after_optimizer_step(clock)
    with section(timer, "EMA update"):
        if ema_weight is not None:
            parts.target.ema_(parts.model.encoder, ema_weight)
        parts.objective.follow_target_(1.0 if ema_weight is None else ema_weight)


class Step:
    """The training step: ``step(parts, views, gen, index, n_target=..., cutmix=..., timer=...)``
    -> the step's statistics (``loss`` and the objective's, device tensors).

    ``index``: the step (0-based; ``parts.clock.at(index)`` is what terms and actions see);
    ``n_target``: leading views the target branch embeds; ``gen``: the step's generator
    (CutMix). No tensor becomes a Python value here: the schedules are Python floats (0-d
    tensors when compiled) and a non-finite loss only sets the device flag ``parts.nonfinite``.
    This class runs :func:`forward_objective` and :func:`update` eagerly; a subclass may replace
    them (compiled) and how the schedules enter (:meth:`schedules`).
    """

    #: the two regions (compiled by :class:`~unigrad.engine.compiled.CompiledStep`)
    forward: Any = staticmethod(forward_objective)
    update: Any = staticmethod(update)
    #: whether the regions are timed section by section (False: each region as one section)
    timed_inside = True

    def schedules(self, parts: RunParts, index: int) -> tuple[Clock, float | torch.Tensor | None]:
        """Sets step ``index``'s learning rates (and scheduled weight decay); returns the clock
        the regions and actions see and the EMA weight ``1 - m`` (None without an EMA). Here:
        Python values (no host read)."""
        wd = parts.wd[index] if parts.wd is not None else None
        set_lr(parts.optimizer, parts.lr[index], parts.peak_lr, wd)
        weight = 1.0 - float(parts.momentum[index])
        return parts.clock.at(index), weight if parts.target.has_ema else None

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """A region's output as the statistics keep it past the step (here: as it is)."""
        return t

    def begin(self) -> None:
        """Before the step's first region (nothing here)."""

    def __call__(
        self,
        parts: RunParts,
        views: list[torch.Tensor],
        gen: torch.Generator,
        index: int,
        *,
        n_target: int,
        cutmix: bool = False,
        timer: NullTimer | None = None,
    ) -> Stats:
        timer = timer or NullTimer()
        inner, outer = (timer, None) if self.timed_inside else (None, timer)
        clock, ema_weight = self.schedules(parts, index)
        online_views, mix = mixed_views(views, gen, cutmix, timer)
        parts.mix = mix
        self.begin()
        with section(outer, "forward (compiled)"):
            loss, stats = self.forward(parts, online_views, views, mix, clock, n_target, inner)
        stats = {k: self.keep(v) for k, v in stats.items()}
        parts.objective.stats = dict(stats)
        with timer("backward"):
            parts.optimizer.zero_grad(set_to_none=True)
            parts.scaler.scale(loss).backward()
            if parts.scaler.is_enabled() and parts.hooks.backward:  # they see true gradients
                parts.scaler.unscale_(parts.optimizer)
            parts.hooks.after_backward(clock)
        with section(outer, "optimizer + EMA (compiled)"):
            self.update(parts, clock, ema_weight, inner)
        if parts.target.kind == "snapshot":  # a copy every k steps: a host decision
            parts.target.update(parts.model.encoder, parts.momentum[index], index + 1)
        with timer("loss + sample set"):
            parts.objective.after_step()  # the bank's enqueue (one index_copy_)
        stats["loss"] = self.keep(loss.detach())
        parts.mark_nonfinite(stats["loss"])  # read at log boundaries and checkpoint writes
        return stats


#: the eager step
train_step = Step()
