"""Optimisers and per-step schedules (precomputed arrays: trivially checkpointed and plotted).

SGD (paper's 100-epoch recipe), LARS (800-epoch recipe; timm's maintained implementation) and
AdamW (torch's; what ViT recipes such as DINO's use). One rule for every optimiser decides which
parameters get weight decay: the 1-d ones (biases, norms' scales and shifts) get none unless
``norm_bias_decay`` (by default they do with SGD, as SimSiam and UniGrad train, and not with
LARS or AdamW); with LARS they are not adapted by the trust ratio either (a param group with
weight_decay 0 is not adapted by timm's Lars). The weight decay may follow DINO's cosine
schedule (``weight_decay`` -> ``weight_decay_end``), set each step with the learning rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unigrad.core.clock import Clock
from unigrad.core.hooks import Action
from unigrad.core.targets import cosine_momentum
from unigrad.engine.optim_config import OPTIMIZERS
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


def wd_schedule(start: float, end: float | None, total_steps: int) -> list[float] | None:
    """DINO's weight-decay schedule: cosine from ``start`` (step 0) to ``end`` (last step), one
    Python float per step; None (the optimiser keeps ``start``) when ``end`` is None or equal.

    w_t = end - (end - start) * (cos(pi * t / T) + 1) / 2, T = steps - 1 (the EMA momentum's
    cosine, :func:`unigrad.core.targets.cosine_momentum`).
    """
    if end is None or end == start:
        return None
    return cosine_momentum(start, end, total_steps).tolist()


def is_norm_or_bias(p: torch.Tensor) -> bool:
    """The rule for what is a bias or a normalisation parameter: a 1-d (or 0-d) parameter."""
    return p.ndim <= 1


def default_norm_bias_decay(optimizer: str) -> bool:
    """Whether ``optimizer`` decays 1-d parameters when ``norm_bias_decay`` is not set: SGD
    does (SimSiam's and UniGrad's recipe), LARS and AdamW do not (BYOL's, DINO's)."""
    return optimizer == "sgd"


def param_groups(
    model: nn.Module,
    weight_decay: float,
    norm_bias_decay: bool,
    bias_lr_scale: float = 1.0,
    predictor_prefix: str | tuple[str, ...] = "predictor.",
    predictor_fixed_lr: bool = False,
    predictor_lr_scale: float = 1.0,
) -> list[dict]:
    """Split parameters into groups carrying ``lr_scale``, ``wd_scale`` and ``fixed_lr`` flags.

    Args:
        norm_bias_decay: whether 1-d parameters (:func:`is_norm_or_bias`) get weight decay;
            without it their group has weight_decay 0 (and no LARS adaptation).
        bias_lr_scale: the 1-d parameters' lr over the weights' (``base_lr_bias / base_lr``).
        predictor_prefix: online heads' names start with it (or one of a tuple): they keep the
            peak lr if ``predictor_fixed_lr`` (SimSiam), their lr times ``predictor_lr_scale``.

    A group's ``wd_scale`` (1 or 0) multiplies the weight decay of a schedule (:func:`set_lr`).
    1-d parameters have a group of their own only where it differs from the weights' one.
    """
    separate = predictor_fixed_lr or predictor_lr_scale != 1.0
    split_1d = not norm_bias_decay or bias_lr_scale != 1.0
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        special = split_1d and is_norm_or_bias(p)
        pred = separate and name.startswith(predictor_prefix)
        decay = norm_bias_decay or not special
        g = groups.setdefault(
            (special, pred),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "wd_scale": 1.0 if decay else 0.0,
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
    predictor_prefix: str | tuple[str, ...] = "predictor.",
    objective: nn.Module | None = None,
    norm_bias_decay: bool | None = None,
) -> torch.optim.Optimizer:
    """``sgd``, ``lars`` (timm's) or ``adamw`` (torch's, default betas) over ``model``.

    ``norm_bias_decay``: weight decay on 1-d parameters; None: the optimiser's recipe
    (:func:`default_norm_bias_decay`). ``momentum``: SGD's and LARS's (AdamW has its betas).
    ``objective``: its learnable parameters (a term's learned temperature or prototypes) train
    too, in a group of their own without weight decay (and without LARS adaptation).
    """
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if norm_bias_decay is None:
        norm_bias_decay = default_norm_bias_decay(name)
    groups = param_groups(
        model,
        weight_decay,
        norm_bias_decay,
        bias_lr_scale,
        predictor_prefix,
        predictor_fixed_lr,
        predictor_lr_scale,
    )
    extra = [p for p in (objective.parameters() if objective else []) if p.requires_grad]
    if extra:
        groups.append(
            {"params": extra, "weight_decay": 0.0, "wd_scale": 0.0, "lr_scale": 1.0,
             "fixed_lr": False}
        )  # fmt: skip
    if name == "lars":
        lars_cls = optional("timm.optim", "timm", "optimizer: lars").Lars
        opt = lars_cls(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    zero_momentum_buffers(opt)
    return opt


def zero_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Create every missing momentum buffer now, as zeros like its parameter (AdamW's groups
    have no ``momentum`` and are left alone).

    SGD and timm's LARS create a buffer lazily at the first step, as a copy of the gradient:
    under ``compile: step`` on CUDA that state would be born inside a CUDA graph's memory pool,
    which the next replay overwrites. From zeros the first update is ``b = 0 * m + g = g``
    bit for bit (dampening 0, as here), so the maths are unchanged.
    """
    for g in optimizer.param_groups:
        if not g.get("momentum"):
            continue
        for p in g["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def wd_scale(group: dict) -> float:
    """A group's ``wd_scale``; a group of a checkpoint written before it existed decays when
    its weight decay was not 0 (fixed at the first call)."""
    return group.setdefault("wd_scale", 1.0 if float(group["weight_decay"]) else 0.0)


def set_lr(
    optimizer: torch.optim.Optimizer, lr: float, peak: float, wd: float | None = None
) -> None:
    """Apply this step's lr and, with a weight-decay schedule, its weight decay ``wd``
    (times each group's ``wd_scale``); ``fixed_lr`` groups stay at the peak lr. A value held
    as a 0-d tensor (``compile: step``, :func:`schedule_tensors`) is filled in place (a kernel
    argument, no host read)."""
    for g in optimizer.param_groups:
        _fill(g, "lr", (peak if g.get("fixed_lr") else lr) * g.get("lr_scale", 1.0))
        if wd is not None:
            _fill(g, "weight_decay", wd * wd_scale(g))


def _fill(group: dict, key: str, value: float) -> None:
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


def schedule_tensors(optimizer: torch.optim.Optimizer, device: torch.device, wd: bool) -> None:
    """Hold every group's lr (and, with a weight-decay schedule ``wd``, the weight decay of the
    groups that decay) as a 0-d float32 tensor on ``device``, so that one compiled graph serves
    every step (:func:`set_lr` fills them)."""
    for g in optimizer.param_groups:
        g["lr"] = torch.zeros((), dtype=torch.float32, device=device)
        if wd and wd_scale(g):
            g["weight_decay"] = torch.zeros((), dtype=torch.float32, device=device)


def clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> Action:
    """An action after backward (:class:`~unigrad.core.hooks.StepHooks`) that scales the
    gradients of every parameter ``optimizer`` trains so that their global l2 norm is at most
    ``max_norm``: g <- g * min(1, max_norm / (||g|| + 1e-6)) (torch's ``clip_grad_norm_``,
    tensor operations only: no host read, so the compiled step holds it too). The step unscales
    a float16 loss scaler's gradients before the actions after backward run."""
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def clip(clock: Clock) -> None:
        nn.utils.clip_grad_norm_(params, max_norm)

    return clip
