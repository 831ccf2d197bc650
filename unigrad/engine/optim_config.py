"""The ``optim`` section of the configuration: run length, batch, optimiser (built by
:mod:`unigrad.engine.optim`), learning-rate, weight-decay and EMA schedules, clipping."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from unigrad.core.section import Section, setting
from unigrad.errors import UserError

#: ``optimizer`` values.
OPTIMIZERS = ("sgd", "lars", "adamw")

#: Warm-up when none is set; shortened to half the run for runs shorter than twice this.
DEFAULT_WARMUP_EPOCHS = 5.0


def default_warmup(epochs: int) -> float:
    """The warm-up a run of ``epochs`` gets when ``warmup_epochs`` is not set."""
    return min(DEFAULT_WARMUP_EPOCHS, epochs / 2)


@dataclass
class OptimConfig(Section):
    """The ``optim`` section: run length, batch, optimiser, learning-rate and EMA schedules."""

    name = "optim"

    epochs: int = setting(100, "epochs to train")
    max_steps: int | None = setting(
        None, "stop at this step, within the schedules of epochs (smoke tests, benchmarks)"
    )
    batch_size: int = setting(256, "global batch (split over ranks)", "arch")
    optimizer: str = setting("sgd", "sgd | lars | adamw (torch's AdamW, default betas)", "schedule")
    base_lr: float = setting(0.05, "lr = base_lr * batch_size / 256", "schedule")
    base_lr_bias: float | None = setting(
        None,
        "base lr of 1-d parameters (biases, norms), as LARS recipes; None: base_lr",
        "schedule",
    )
    weight_decay: float = setting(
        1e-4,
        "weight decay (at step 0 with weight_decay_end); 1-d parameters: norm_bias_decay",
        "schedule",
    )
    weight_decay_end: float | None = setting(
        None, "cosine weight-decay schedule (DINO's) from weight_decay at step 0 to this at the "
        "last step; None: weight_decay throughout", "schedule"
    )  # fmt: skip
    norm_bias_decay: bool | None = setting(
        None, "weight decay on 1-d parameters (biases, norms); None: the optimiser's recipe "
        "(sgd: yes, as SimSiam and UniGrad; lars, adamw: no)"
    )  # fmt: skip
    clip_grad: float = setting(
        0.0, "clip the gradients' global l2 norm to this after backward (0: off)"
    )
    sgd_momentum: float = setting(0.9, "SGD / LARS momentum")
    warmup_epochs: float | None = setting(
        None, "None: 5, or half the run when that is shorter", "schedule"
    )
    min_lr_ratio: float = setting(1e-3, "final lr / peak lr of the cosine schedule", "schedule")
    predictor_fixed_lr: bool | None = setting(
        None, "the learned predictor keeps the peak lr; None: the method's (SimSiam: True)"
    )
    predictor_lr_scale: float = setting(1.0, "the learned predictor's lr / the backbone's")
    momentum_base: float | None = setting(
        None,
        "EMA momentum of the target at step 0; None: the method's (0.99 / 0.996)",
        "schedule",
    )
    momentum_final: float = setting(
        1.0, "EMA momentum at the last step (cosine schedule)", "schedule"
    )

    def check(self) -> None:
        if self.batch_size < 2:
            raise UserError(
                f"batch_size must be >= 2 (a batch of {self.batch_size} has no negatives "
                "and no batch statistics)"
            )
        if self.epochs < 1:
            raise UserError("epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("max_steps must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"optimizer must be {', '.join(OPTIMIZERS[:-1])} or {OPTIMIZERS[-1]}, "
                f"got {self.optimizer!r}"
            )
        if self.base_lr <= 0:
            raise UserError("base_lr must be > 0")
        if self.predictor_lr_scale <= 0:
            raise UserError("predictor_lr_scale must be > 0")
        if self.weight_decay < 0:
            raise UserError("weight_decay must be >= 0")
        if self.weight_decay_end is not None and self.weight_decay_end < 0:
            raise UserError(
                f"weight_decay_end must be >= 0 (None: no schedule), got {self.weight_decay_end}"
            )
        if self.clip_grad < 0:
            raise UserError(f"clip_grad must be >= 0 (0: off), got {self.clip_grad}")
        w = self.warmup_epochs
        if w is not None and w < 0:
            raise UserError(f"warmup_epochs must be >= 0, got {w}")
        if w is not None and w > self.epochs:
            raise UserError(
                f"warmup_epochs {w} is longer than the run ({self.epochs} epochs); lower it "
                f"(--set warmup_epochs={default_warmup(self.epochs):g}), remove it to get the "
                "default that fits, or raise --epochs"
            )
        if self.momentum_base is not None and not 0 <= self.momentum_base <= 1:
            raise UserError("momentum_base must be in [0, 1]")
        if not 0 <= self.momentum_final <= 1:
            raise UserError("momentum_final must be in [0, 1]")


def schedule_keys() -> tuple[str, ...]:
    """The settings of the lr, weight-decay and EMA schedules (fields tagged ``schedule``)."""
    return tuple(f.name for f in fields(OptimConfig) if "schedule" in f.metadata["tags"])


def check_same_schedules(path: Path, state: dict[str, Any], cfg: Any, schedule_steps: int) -> None:
    """Refuse to continue a checkpoint (its ``state``) on other schedules than the run's own:
    another length than this run's ``schedule_steps`` (epochs x steps per epoch; the batch size
    and the data set the latter), or another setting of :func:`schedule_keys`; either would join
    two schedules. ``max_steps`` only stops a run within them; a checkpoint that does not record
    the length was written when ``max_steps`` set it."""
    old = state.get("config", {})
    length = state.get("schedule_steps")
    why = f"epochs {old.get('epochs')!r} -> {cfg.epochs!r}"
    if old.get("epochs") == cfg.epochs:
        why = "another number of steps per epoch: other data"
    if length is None:  # an older checkpoint: its schedules ended at max_steps when set
        length = schedule_steps // max(cfg.epochs, 1) * int(old.get("epochs") or cfg.epochs)
        if old.get("max_steps") and old["max_steps"] < length:
            length = int(old["max_steps"])
            why = f"an earlier version squeezed them into its --max-steps {length}"
    if length != schedule_steps:
        raise UserError(
            f"{path} was trained on lr and EMA schedules of {length} steps, this run's have "
            f"{schedule_steps} ({why}); --resume continues the same schedules: resume with the "
            "run's --epochs and data (--max-steps only stops early within them), or start a new "
            "--out"
        )
    changed = [
        f"{k}: {old[k]!r} -> {getattr(cfg, k)!r}"
        for k in schedule_keys()
        if k in old and old[k] != getattr(cfg, k)
    ]
    if changed:
        raise UserError(
            f"{path} was trained with other lr / weight-decay / EMA schedules "
            f"({'; '.join(changed)}); --resume continues the run's own schedules: resume with "
            "its settings, or start a new --out"
        )
