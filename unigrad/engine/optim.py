"""Optimisers and per-step schedules (precomputed arrays: trivially checkpointed and plotted).

SGD (paper's 100-epoch recipe) and LARS (800-epoch recipe; timm's maintained implementation).
With LARS, biases and normalisation parameters are excluded from the trust-ratio adaptation and
from weight decay (a param group with weight_decay 0 is not adapted by timm's Lars).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unigrad.errors import optional


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
    """Apply this step's lr; ``fixed_lr`` groups stay at the peak."""
    for g in optimizer.param_groups:
        g["lr"] = (peak if g.get("fixed_lr") else lr) * g.get("lr_scale", 1.0)
