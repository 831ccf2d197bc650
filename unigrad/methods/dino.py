"""DINO (Caron et al., ICCV 2021): self-distillation of a momentum teacher's centred, sharpened
distribution over K prototypes.

The head is an MLP to a bottleneck, l2-normalised (u [N, C]), then a weight-normalised last layer
with its gain fixed at 1, whose rows are the prototypes w_k = v_k / ||v_k||. The student
distribution is s(u) = softmax(W u / tau_s); the teacher's code of the other view is
q = softmax((W_m u2^m - c) / tau_t), with W_m the teacher's copy of the last layer, c the centre
(an EMA of the all-reduced batch mean of the teacher's logits, updated after the loss) and tau_t
warmed up by epoch. The loss per pair is the same prototype cross-entropy as SwAV's, so the
gradient is the same row-a form (SPEC): (1/tau_s)(-W^T q + sum_k s_k w_k); only q differs.
Centring acts on the positive (the code), never on the negative.

Through the weight normalisation the prototypes' own gradient becomes
dl/dv_k = (I - w_k w_k^T) dl/dw_k / ||v_k||, which autograd carries from
:func:`~unigrad.methods.prototypes.prototype_surrogate`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unigrad.core import dist
from unigrad.core.clock import Clock
from unigrad.core.needs import Head, HeadContext, Needs
from unigrad.core.spec import Param
from unigrad.core.term import Step
from unigrad.methods.prototypes import (
    FREEZE,
    Prototypes,
    PrototypeTerm,
    Row,
    after_epochs,
    grad_prototype_ce,
    grad_prototype_simplified,
    n_prototypes,
    prototype_ce,
    prototype_method,
    prototype_surrogate,
)


def weight_norm_rows(v: torch.Tensor) -> torch.Tensor:
    """The last layer's weight with its gain fixed at 1: w_k = v_k / ||v_k||, [K, C]."""
    return v / v.norm(dim=1, keepdim=True)


@torch.no_grad()
def teacher_codes(
    logits: torch.Tensor, center: torch.Tensor, temp: float | torch.Tensor
) -> torch.Tensor:
    """DINO's target q = softmax((W_m u2^m - c) / tau_t): ``logits`` [N, K] the teacher's,
    ``center`` [K] (or [1, K]); returns [N, K]."""
    return torch.softmax((logits - center) / temp, dim=1)


@torch.no_grad()
def center_update(
    center: torch.Tensor, logits: list[torch.Tensor], momentum: float
) -> torch.Tensor:
    """c <- m c + (1 - m) mean(teacher logits), the mean over the global batch of every given
    (global) view, all-reduced over ranks. ``center`` [K]; ``logits`` [N, K] per view; returns
    the new centre (``center`` is not modified)."""
    t = torch.cat(logits)
    batch = dist.all_reduce(t.sum(0)) / (t.shape[0] * dist.world_size())
    return center * momentum + batch.to(center.dtype) * (1 - momentum)


def teacher_temperature(
    epoch: float | torch.Tensor, start: float, end: float, warmup_epochs: float
) -> float | torch.Tensor:
    """DINO's teacher-temperature warm-up: ``start`` at epoch 0, linear to ``end`` at epoch
    ``warmup_epochs - 1`` (its ``linspace(start, end, warmup)``, one value per epoch), then
    ``end``. ``epoch`` may be fractional (the line is followed within an epoch, which its
    authors hold constant; at whole epochs the values are theirs) and a 0-d tensor
    (``compile: step``); a warm-up under 2 epochs ends at ``warmup_epochs``."""
    if warmup_epochs <= 0:
        return end
    frac = epoch / (warmup_epochs - 1 if warmup_epochs >= 2 else warmup_epochs)
    frac = frac.clamp(max=1.0) if isinstance(frac, torch.Tensor) else min(frac, 1.0)
    return start + (end - start) * frac


def _epochs(clock: Clock) -> float | torch.Tensor:
    return clock.step / clock.steps_per_epoch


#: DINO's schedules (hyperparameter -> value at a clock, from the checked base values)
DINO_SCHEDULES = {
    "teacher_temp": lambda clock, hp: teacher_temperature(
        _epochs(clock),
        hp["warmup_teacher_temp"],
        hp["teacher_temp"],
        hp["warmup_teacher_temp_epochs"],
    ),
    "train_prototypes": after_epochs("freeze_prototypes"),
}


def dino_head(ctx: HeadContext) -> nn.Module:
    """DINO's head up to its bottleneck: ``proj_depth`` linear layers with GELU between them,
    after a BatchNorm where ``head_norm`` is ``bn`` (its ``use_bn_in_head``; default none),
    hidden width ``proj_hidden`` (default C), output the bottleneck C = ``proj_dim``, weights
    trunc_normal(0.02) and biases 0. The l2 normalisation and the weight-normalised last layer
    follow in the objective (the prototypes), so the gradient form sees u1 and W."""
    hidden = ctx.proj_hidden or ctx.proj_dim
    dims = [ctx.feat_dim] + [hidden] * (ctx.proj_depth - 1) + [ctx.proj_dim]
    bn = ctx.hp.get("head_norm") == "bn"
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        linear = nn.Linear(a, b)
        nn.init.trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(linear.bias)
        if i == len(dims) - 2:
            layers.append(linear)
        else:
            layers += [linear, nn.BatchNorm1d(b), nn.GELU()] if bn else [linear, nn.GELU()]
    return nn.Sequential(*layers)


class Center(nn.Module):
    """DINO's centre c [K] of the teacher's logits (a buffer, so checkpoints carry it)."""

    center: torch.Tensor

    def __init__(self, k: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(k))


@dataclass(frozen=True)
class Distillation(PrototypeTerm):
    """DINO: codes from the momentum teacher's last layer, centred and sharpened; the centre is
    updated after the codes (the loss) from both global views' teacher logits. The teacher's
    copy of the last layer takes the target branch's EMA step right after it
    (:meth:`~unigrad.core.objective.Objective.follow_target_`: the run's momentum schedule, one
    setting for the whole teacher)."""

    def modules(self, dim: int, hp: dict[str, Any]) -> dict[str, nn.Module]:
        k = int(hp["n_prototypes"])
        return {"prototypes": Prototypes(k, dim, weight_norm=True), "center": Center(k)}

    def codes(self, step: Step, protos: Prototypes) -> list[torch.Tensor]:
        protos.note_teacher_use()
        w = protos.teacher_rows()
        logits = [step.norm(t.detach()) @ w.T for t in step.targets.pos]
        center = step.parts["center"]
        assert isinstance(center, Center)
        temp = step.hp["teacher_temp"]
        step.stats["teacher_temp"] = torch.as_tensor(temp, dtype=torch.float32)
        codes = [teacher_codes(x, center.center, temp) for x in logits]
        center.center.copy_(center_update(center.center, logits, step.hp["center_momentum"]))
        return codes


DINO = prototype_method(
    "dino",
    "DINO: cross-entropy to a momentum teacher's centred, sharpened distribution",
    Distillation,
    code="q_c(u2^m)",
    target="momentum",
    params={
        "n_prototypes": n_prototypes(4096),
        "teacher_temp": Param(
            "teacher temperature tau_t after its warm-up", 0.07, lambda v: v > 0, "> 0"
        ),
        "warmup_teacher_temp": Param(
            "teacher temperature at epoch 0", 0.04, lambda v: v > 0, "> 0"
        ),
        "warmup_teacher_temp_epochs": Param(
            "epochs of the teacher temperature's linear warm-up (50: solo-learn's argparse-era"
            " default; its Hydra configs use 0, tau_t = teacher_temp throughout)",
            50.0,
            lambda v: v >= 0,
            ">= 0",
        ),
        "center_momentum": Param("EMA rate of the centre", 0.9, lambda v: 0 <= v < 1, "in [0, 1)"),
        "head_norm": Param(
            "normalisation in the head's hidden layers: none (its authors' and solo-learn's"
            " default) or bn (its use_bn_in_head)",
            "none",
            lambda v: v in ("none", "bn"),
            "none or bn",
            cast=str,
        ),
        "freeze_prototypes": FREEZE.with_default(1.0),
    },
    train_defaults={"momentum_base": 0.9995},
    needs=Needs(heads={"projector": Head(dino_head, copied=True)}, schedules=DINO_SCHEDULES),
)

METHODS = [DINO]


def derivations(d: object) -> list[Row]:
    """Rows for ``unigrad check-gradients`` (see :func:`unigrad.methods.swav.derivations`):
    the student's gradient w.r.t. u1 with the centred, sharpened teacher code, and the
    prototypes' gradient through the weight normalisation, w.r.t. the unnormalised rows v."""
    u1, u2, bank = d.u1, d.u2, d.bank  # type: ignore[attr-defined]
    n, k = u1.shape[0], bank.shape[0]
    tau_s, tau_t = 0.1, 0.04
    gen = torch.Generator().manual_seed(1)
    v = bank * (0.5 + torch.rand(k, 1, generator=gen, dtype=bank.dtype))  # rows of any norm
    teacher = F.normalize(v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype), dim=1)
    logits = u2 @ teacher.T
    center = logits.mean(0) + 0.1 * torch.randn(k, generator=gen, dtype=v.dtype)
    q = teacher_codes(logits, center, tau_t)
    protos = weight_norm_rows(v)
    vv = v.detach().clone().requires_grad_(True)
    u = u1.detach().clone().requires_grad_(True)
    du, dv = torch.autograd.grad(prototype_ce(u, weight_norm_rows(vv), q, tau_s), (u, vv))
    g = grad_prototype_ce(u1, protos, q, tau_s) / n
    dw = (torch.softmax(u1 @ protos.T / tau_s, 1) - q).T @ u1 / (n * tau_s)  # dl/dw_k
    proj = dw - (dw * protos).sum(1, keepdim=True) * protos  # (I - w w^T) dl/dw
    closed_v = proj / v.norm(dim=1, keepdim=True)
    (dv_sur,) = torch.autograd.grad(prototype_surrogate(u1, weight_norm_rows(vv), q, tau_s), (vv,))
    return [
        (
            "dino dl/du1",
            "dino",
            "exact",
            du,
            g,
            "q = softmax((W_m u2^m - c) / tau_t): row a, V_proto",
        ),
        (
            "dino dl/dv (weight norm)",
            "dino",
            "exact",
            dv,
            closed_v,
            "(I - w_k w_k^T) dl/dw_k / ||v_k||, gain fixed at 1",
        ),
        ("dino surrogate dl/dv", "dino", "exact", dv, dv_sur, "the added prototype surrogate"),
        (
            "dino -Wq -> -u2",
            "dino",
            "simplification",
            g,
            grad_prototype_simplified(u1, u2, protos, tau_s) / n,
            "positive -u2^m instead of the teacher's code mapped onto the prototypes",
        ),
    ]


DERIVATIONS = [derivations]
