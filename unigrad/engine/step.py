"""One optimisation step: views -> online and target forward -> objective -> backward ->
actions after backward -> optimiser -> actions after the optimiser step -> EMA update ->
sample-set update (paper eq. 13's surrogate for the gradient forms).
"""

from __future__ import annotations

import torch

from unigrad.core.objective import Mix
from unigrad.engine.cutmix import cutmix as mix_views
from unigrad.engine.optim import set_lr
from unigrad.engine.parts import RunParts
from unigrad.engine.profiling import NullTimer


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


def train_step(
    parts: RunParts,
    views: list[torch.Tensor],
    gen: torch.Generator,
    step: int,
    *,
    n_target: int,
    cutmix: bool = False,
    timer: NullTimer | None = None,
) -> dict[str, torch.Tensor]:
    """Step ``step`` (0-based) on augmented ``views`` (global first, [B, 3, H_i, W_i] each).

    ``n_target``: leading views the target branch embeds; ``gen``: the step's generator (CutMix).
    Returns the step's statistics as device tensors (``loss`` and the objective's stats). No
    tensor becomes a Python value here: the schedules are Python floats and a non-finite loss
    only sets the device flag ``parts.nonfinite``.
    """
    timer = timer or NullTimer()
    clock = parts.clock.at(step)
    wd = parts.wd[step] if parts.wd is not None else None
    set_lr(parts.optimizer, parts.lr[step], parts.peak_lr, wd)  # Python floats: no host read
    online_views, mix = mixed_views(views, gen, cutmix, timer)
    parts.mix = mix
    dtype = parts.amp or torch.float32
    with torch.autocast(views[0].device.type, dtype=dtype, enabled=parts.amp is not None):
        with timer("online forward"):
            z, p = parts.net(online_views)
        with timer("target forward"):
            targets = parts.target(views[:n_target], z[:n_target])
        with timer("loss + sample set"):
            loss = parts.objective(z, targets=targets, pred=p, mix=mix, step=clock)
            stats = dict(parts.objective.stats)
    with timer("backward"):
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
    with timer("optimizer"):
        if parts.scaler.is_enabled() and parts.hooks.backward:  # the actions see true gradients
            parts.scaler.unscale_(parts.optimizer)
        parts.hooks.after_backward(clock)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.hooks.after_optimizer_step(clock)
    with timer("EMA update"):
        parts.target.update(parts.model.encoder, parts.momentum[step], step + 1)
    with timer("loss + sample set"):
        parts.objective.after_step()
    stats["loss"] = loss.detach()
    parts.mark_nonfinite(stats["loss"])  # read at log boundaries and checkpoint writes
    return stats
