"""The prototypes family (SwAV, DINO): a cross-entropy of each view's softmax over K prototypes
against a detached code of another view, in loss form and in gradient form.

The student distribution of an l2-normalised embedding u [N, C] over the prototypes W [K, C]
(unit rows) is s(u) = softmax(W u / tau); with the target code q [N, K] (a row of the simplex,
made by the method: :mod:`unigrad.methods.swav`'s Sinkhorn-Knopp, :mod:`unigrad.methods.dino`'s
centred and sharpened teacher), per pair l = -sum_k q_k log s_k(u) and (SPEC, "Beyond the
paper: SwAV and DINO")

    dl/du = (1 / tau) * (-W^T q + sum_k s_k w_k)

which is Table 2's row a term for term: the positive is the code mapped back onto the
prototypes, the negative a softmax-weighted sum over the sample set V_proto = {w_1 .. w_K}
(lambda = 1, scale 1/tau). The prototypes' own gradient, dl/dw_k = (1/tau)(s_k - q_k) u, is
not given by the surrogate of a gradient form; :func:`prototype_surrogate` supplies it. The
simplified row replaces -W^T q by the target embedding -u2^t (as SimCLR's eq. 20 -> 21).

Here: the cross-entropy, its gradients and the multi-crop pair weights; the prototypes as a
module (:class:`Prototypes`); the term shared by both methods (:class:`PrototypeTerm`, whose
``codes`` a method supplies); and :func:`prototype_method`, which builds a method's spec (its
loss form, exact and simplified gradient forms) from its term, hyperparameters and needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unigrad.core.clock import Clock
from unigrad.core.needs import Needs
from unigrad.core.spec import Form, MethodSpec, Param
from unigrad.core.term import Step, Term

Row = tuple[str, str, str, torch.Tensor, torch.Tensor, str]


# ------------------------------------------------------------------ prototype cross-entropy
def prototype_ce(
    u: torch.Tensor, protos: torch.Tensor, q: torch.Tensor, tau: float
) -> torch.Tensor:
    """Swapped prediction / DINO loss of one pair: mean_i -sum_k q_ik log s_k(u_i).

    Args:
        u: anchors [N, C] (l2-normalised); protos: prototypes W [K, C]; q: codes [N, K]
            (rows in the simplex, detached by the caller); tau: the student temperature.
    """
    return -(q * torch.log_softmax(u @ protos.T / tau, dim=1)).sum(1).mean()


@torch.no_grad()
def grad_prototype_ce(
    u: torch.Tensor, protos: torch.Tensor, q: torch.Tensor, tau: float
) -> torch.Tensor:
    """Exact gradient form of :func:`prototype_ce` times N: (1/tau)(-W^T q + sum_k s_k w_k),
    [N, C] (positive -W^T q, negative over V_proto, lambda 1)."""
    s = torch.softmax(u @ protos.T / tau, dim=1)
    return (s - q) @ protos / tau


@torch.no_grad()
def grad_prototype_simplified(
    u: torch.Tensor, pos: torch.Tensor, protos: torch.Tensor, tau: float
) -> torch.Tensor:
    """Simplified row: (1/tau)(-u2^t + sum_k s_k w_k) [N, C], the target embedding ``pos``
    [N, C] itself as the positive, the negatives still over the prototypes."""
    s = torch.softmax(u @ protos.T / tau, dim=1)
    return (s @ protos - pos) / tau


def prototype_surrogate(
    u: torch.Tensor, protos: torch.Tensor, q: torch.Tensor, tau: float
) -> torch.Tensor:
    """Scalar whose gradient w.r.t. the prototypes W [K, C] is the loss's,
    (1/tau) (s - q)^T u / N, and w.r.t. u nothing: ((s - q) * (u W^T)).sum(-1).mean() / tau
    with s, q and u detached. Gradient forms add it so the prototypes train."""
    u = u.detach()
    with torch.no_grad():
        coef = torch.softmax(u @ protos.T / tau, dim=1) - q
    return (coef * (u @ protos.T)).sum(1).mean() / tau


def pair_weights(pairs: Sequence[tuple[int, Sequence[int]]]) -> dict[int, float]:
    """Weights (online view i -> w_i) for the objective's mean over pairs, so that
    mean_i w_i l_i is the authors' average over (view, code) terms.

    A pair (view i, codes js) stands for len(js) terms (the cross-entropy is linear in q, so the
    term against the mean code is the mean of the terms); SwAV and DINO average all 2 (V - 1)
    terms equally, so w_i = len(js) * P / sum_j len(js_j) for P pairs (1 for two views; a local
    view counts twice a global one).
    """
    total = sum(len(js) for _, js in pairs)
    return {i: len(js) * len(pairs) / total for i, js in pairs}


# -------------------------------------------------------------------------- the parts
class Prototypes(nn.Module):
    """K prototypes, the sample set V_proto: a bias-free layer ``weight`` [K, C].

    ``weight_norm=False`` (SwAV): the rows are used as stored and renormalised to unit length
    before every forward (:meth:`renormalize_`, as its authors do at the start of each
    iteration: the same as after every optimiser step). ``weight_norm=True`` (DINO): the rows
    are used as v_k / ||v_k|| (gain fixed at 1), and ``teacher`` [K, C] is the momentum
    teacher's copy of v (:meth:`follow_target_`).
    """

    weight: nn.Parameter
    teacher: torch.Tensor

    def __init__(self, k: int, dim: int, *, weight_norm: bool = False) -> None:
        super().__init__()
        self.weight_norm = weight_norm
        self._unfollowed = 0  # steps that read the teacher's copy since it last followed
        w = torch.empty(k, dim)
        if weight_norm:  # DINO: trunc_normal(std 0.02) as its other linear layers
            nn.init.trunc_normal_(w, std=0.02)
        else:  # SwAV: nn.Linear's default init, normalised at the first step
            nn.init.kaiming_uniform_(w, a=5**0.5)
        self.weight = nn.Parameter(w)
        if weight_norm:
            self.register_buffer("teacher", w.clone())

    def rows(self) -> torch.Tensor:
        """The prototypes w_k as unit rows, [K, C] (with gradient to ``weight``)."""
        return F.normalize(self.weight, dim=1) if self.weight_norm else self.weight

    def teacher_rows(self) -> torch.Tensor:
        """The teacher's prototypes, unit rows [K, C], detached."""
        return F.normalize(self.teacher, dim=1)

    @torch.no_grad()
    def renormalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))

    @torch.no_grad()
    def follow_target_(self, weight: float | torch.Tensor) -> None:
        """teacher <- teacher + weight (v - teacher), ``weight`` = 1 - m: the same EMA step as
        the target branch's, right after it (the run's ``update``; in one's own loop, after
        ``target.update``: :meth:`unigrad.core.objective.Objective.follow_target_`). A no-op
        without a teacher copy (SwAV)."""
        if not self.weight_norm:
            return
        if isinstance(weight, torch.Tensor):  # the EMA weight under compile: step
            weight = weight.to(self.teacher.dtype)
        self.teacher.lerp_(self.weight.detach(), weight)
        if not torch.compiler.is_compiling():
            self._unfollowed = 0

    def note_teacher_use(self) -> None:
        """Counts the steps that read the teacher's copy since it last followed the student
        (Python, never under compile) and warns once when two in a row did not follow: one's
        own loop forgot :meth:`follow_target_`, so the teacher would stay at its start."""
        if torch.compiler.is_compiling():
            return
        self._unfollowed += 1
        if self._unfollowed == 3:
            warnings.warn(
                "the teacher's copy of the prototypes has not followed the student for 2 steps: "
                "call objective.follow_target_(1 - m) after target.update(...) in your loop",
                stacklevel=3,
            )


def prototypes_used(codes: list[torch.Tensor]) -> torch.Tensor:
    """Fraction of the K prototypes that are the largest entry of at least one code [N, K]."""
    k = codes[0].shape[1]
    idx = torch.cat([q.argmax(1) for q in codes])
    return torch.zeros(k, device=idx.device).scatter_(0, idx, 1.0).mean()


# ---------------------------------------------------------------------------- the term
@dataclass(frozen=True)
class PrototypeTerm(Term):
    """Cross-entropy of each view's student distribution over the prototypes against the code
    of a global view (SwAV and DINO; :meth:`codes` makes the codes).

    ``positive``: ``code`` (loss form, and the exact gradient form -W^T q) or ``target`` (the
    simplified row, -u2^t). Gradient forms add :func:`prototype_surrogate` through
    :meth:`parts_loss` so the prototypes train. ``step.hp["train_prototypes"]`` (a schedule
    by epoch; default on) gates the prototypes' gradient: SwAV's frozen prototypes, DINO's
    cancelled last layer.
    """

    sets: tuple[str, ...] = ("protos",)
    takes_cutmix: bool = False
    positive_from: str = "code"  # "code" | "target"

    def codes(self, step: Step, protos: Prototypes) -> list[torch.Tensor]:
        """The detached codes q [N, K] of each global view."""
        raise NotImplementedError

    def prepare(self, step: Step) -> None:
        protos = step.parts["prototypes"]
        assert isinstance(protos, Prototypes)
        codes = self.codes(step, protos)
        step.stats["protos_used"] = prototypes_used(codes)
        w = protos.rows()
        gate = step.hp.get("train_prototypes", True)
        if gate is not True:  # frozen: the same values, a gradient times 0 (tensor-friendly)
            w = w.detach() + (w - w.detach()) * gate
        step.cache["protos"] = (
            w,
            codes,
            pair_weights(step.pairs),
        )

    def pair(self, step: Step, i: int, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        w, codes, weights = step.cache["protos"]
        js = dict(step.pairs)[i]
        q = codes[js[0]] if len(js) == 1 else torch.stack([codes[j] for j in js]).mean(0)
        tau, c = step.hp["tau"], weights[i]
        if self.kind == "loss":
            return c * prototype_ce(u, w, q, tau)
        step.cache.setdefault("parts_loss", []).append(c * prototype_surrogate(u, w, q, tau))
        if self.positive_from == "target":
            return c * grad_prototype_simplified(u, pos, w.detach(), tau)
        return c * grad_prototype_ce(u, w.detach(), q, tau)

    def parts_loss(self, step: Step) -> torch.Tensor | None:
        terms = step.cache.get("parts_loss")
        return torch.stack(terms).sum() / len(step.pairs) if terms else None


# ------------------------------------------------------------------------------ spec
#: hyperparameters of both methods (their defaults differ: see each spec)
PROTO_TAU = Param(
    "student temperature tau_s of the softmax over the prototypes", 0.1, lambda v: v > 0, "> 0"
)
FREEZE = Param(
    "epochs (from the start) during which the prototypes get no gradient",
    0.0,
    lambda v: v >= 0,
    ">= 0",
)


def n_prototypes(default: int) -> Param:
    return Param("number of prototypes K", default, lambda v: v >= 2, ">= 2", int)


def prototype_method(
    name: str,
    description: str,
    term: type[PrototypeTerm],
    *,
    code: str,
    target: str,
    params: dict[str, Param],
    needs: Needs,
    train_defaults: dict[str, Any] | None = None,
) -> MethodSpec:
    """A prototype method: its loss form, the exact gradient form (default row) and the
    simplified row, with ``code`` / ``target`` naming its code and target embedding in the
    table. ``tau`` (the student temperature) is added to ``params``; ``needs`` declares its
    heads and schedules."""
    neg = "sum_k s_k w_k / tau"

    def grad(key: str, pos: str, note: str, **kw: str) -> Form:
        return Form(
            key=key,
            kind="grad",
            row="",
            norm="l2",
            pos_grad=pos,
            neg_grad=neg,
            term=term("grad", **kw),
            balance=1.0,
            note=note,
        )

    return MethodSpec(
        name=name,
        family="prototypes",
        description=description,
        target=target,
        loss=Form(
            key="loss",
            kind="loss",
            row="",
            norm="l2",
            pos_grad=f"CE(s(u1), {code})",
            neg_grad="prototype softmax",
            term=term("loss"),
        ),
        grads={
            "exact": grad("exact", "-W q / tau", "row a: the code mapped onto the prototypes"),
            "simple": grad(
                "simple",
                f"-{target_symbol(target)} / tau",
                "the target embedding as the positive (SPEC's simplified row)",
                positive_from="target",
            ),
        },
        default_grad="exact",
        params={"tau": PROTO_TAU, **params},
        train_defaults=dict(train_defaults or {}),
        needs=needs,
    )


def target_symbol(target: str) -> str:
    return "u2^m" if target == "momentum" else "u2^t"


def after_epochs(param: str) -> Callable[[Clock, Mapping[str, Any]], Any]:
    """Schedule: whether the run is past ``hp[param]`` epochs (a 0-d tensor under compile)."""

    def on(clock: Clock, hp: Mapping[str, Any]) -> Any:
        return clock.step >= hp[param] * clock.steps_per_epoch

    return on


__all__ = [
    "PrototypeTerm",
    "Prototypes",
    "grad_prototype_ce",
    "grad_prototype_simplified",
    "pair_weights",
    "prototype_ce",
    "prototype_method",
    "prototype_surrogate",
    "prototypes_used",
]
