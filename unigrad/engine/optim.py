"""Optimisers and per-step schedules (precomputed arrays: trivially checkpointed and plotted).

SGD (paper's 100-epoch recipe) and LARS (800-epoch recipe; timm's maintained implementation).
With LARS, biases and normalisation parameters are excluded from the trust-ratio adaptation and
from weight decay (a param group with weight_decay 0 is not adapted by timm's Lars).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from unigrad.core.section import Section, setting
from unigrad.errors import UserError, optional


def lr_schedule(
    peak: float, total_steps: int, warmup_steps: int, min_ratio: float = 1e-3
) -> torch.Tensor:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine to peak*min_ratio.

    Returns a float64 tensor [total_steps] (value for step t, before its update).
    """
    t = torch.arange(total_steps, dtype=torch.float64)
    warm = peak * (t + 1) / max(warmup_steps, 1)
    span = max(total_steps - warmup_steps - 1, 1)
    progress = ((t - warmup_steps) / span).clamp(0, 1)
    low = peak * min_ratio
    cos = low + (peak - low) * 0.5 * (1 + torch.cos(math.pi * progress))
    return torch.where(t < warmup_steps, warm, cos)


def is_bias_or_norm(name: str, p: nn.Parameter) -> bool:
    return p.ndim <= 1 or name.endswith(".bias")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    exclude_bias_norm: bool,
    bias_lr_scale: float = 1.0,
    predictor_prefix: str = "predictor.",
    predictor_fixed_lr: bool = False,
    predictor_lr_scale: float = 1.0,
) -> list[dict]:
    """Split parameters into groups carrying ``lr_scale`` and ``fixed_lr`` flags.

    Args:
        exclude_bias_norm: biases and norm weights get weight_decay 0 (and no LARS adaptation)
            and learning rate ``base_lr_bias`` (``bias_lr_scale`` times the weights' lr).
        predictor_prefix: names of the predictor's parameters start with it; they keep the
            peak lr if ``predictor_fixed_lr`` (SimSiam) and their lr is multiplied by
            ``predictor_lr_scale`` (a larger predictor lr, as BYOL/SimSiam recipes often need).
    """
    separate = predictor_fixed_lr or predictor_lr_scale != 1.0
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        special = exclude_bias_norm and is_bias_or_norm(name, p)
        pred = separate and name.startswith(predictor_prefix)
        g = groups.setdefault(
            (special, pred),
            {
                "params": [],
                "weight_decay": 0.0 if special else weight_decay,
                "lr_scale": (bias_lr_scale if special else 1.0)
                * (predictor_lr_scale if pred else 1.0),
                "fixed_lr": pred and predictor_fixed_lr,
            },
        )
        g["params"].append(p)
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    bias_lr_scale: float = 1.0,
    predictor_fixed_lr: bool = False,
    predictor_lr_scale: float = 1.0,
    predictor_prefix: str = "predictor.",
    objective: nn.Module | None = None,
) -> torch.optim.Optimizer:
    """``sgd`` (weight decay on every parameter, as SimSiam/UniGrad) or ``lars``.

    ``objective``: its learnable parameters (a term's learned temperature or prototypes) train
    too, in a group of their own without weight decay (and without LARS adaptation).
    """
    lars = name == "lars"
    groups = param_groups(
        model,
        weight_decay,
        lars,
        bias_lr_scale,
        predictor_prefix,
        predictor_fixed_lr,
        predictor_lr_scale,
    )
    extra = [p for p in (objective.parameters() if objective else []) if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0, "lr_scale": 1.0, "fixed_lr": False})
    if lars:
        lars_cls = optional("timm.optim", "timm", "optimizer: lars").Lars
        return lars_cls(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, peak: float) -> None:
    """Apply this step's lr; ``fixed_lr`` groups stay at the peak. A group whose lr is a 0-d
    tensor (``compile: step``) has it filled in place (a kernel argument, no host read)."""
    for g in optimizer.param_groups:
        value = (peak if g.get("fixed_lr") else lr) * g.get("lr_scale", 1.0)
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(value)
        else:
            g["lr"] = value


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
    max_steps: int | None = setting(None, "stop early (smoke tests, benchmarks)")
    batch_size: int = setting(256, "global batch (split over ranks)", "arch")
    optimizer: str = setting("sgd", "sgd | lars")
    base_lr: float = setting(0.05, "lr = base_lr * batch_size / 256")
    base_lr_bias: float | None = setting(None, "LARS recipe: biases and norms (None: base_lr)")
    weight_decay: float = setting(1e-4, "weight decay (not on biases and norms with LARS)")
    sgd_momentum: float = setting(0.9, "SGD / LARS momentum")
    warmup_epochs: float | None = setting(None, "None: 5, or half the run when that is shorter")
    min_lr_ratio: float = setting(1e-3, "final lr / peak lr of the cosine schedule")
    predictor_fixed_lr: bool | None = setting(
        None, "the learned predictor keeps the peak lr; None: the method's (SimSiam: True)"
    )
    predictor_lr_scale: float = setting(1.0, "the learned predictor's lr / the backbone's")
    momentum_base: float | None = setting(
        None, "EMA momentum of the target at step 0; None: the method's (0.99 / 0.996)"
    )
    momentum_final: float = setting(1.0, "EMA momentum at the last step (cosine schedule)")

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
        if self.optimizer not in ("sgd", "lars"):
            raise UserError("optimizer must be sgd or lars")
        if self.base_lr <= 0:
            raise UserError("base_lr must be > 0")
        if self.predictor_lr_scale <= 0:
            raise UserError("predictor_lr_scale must be > 0")
        if self.weight_decay < 0:
            raise UserError("weight_decay must be >= 0")
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
