"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of online codes over K prototypes.

The student distribution of an l2-normalised embedding u [N, C] over the prototypes W [K, C]
(unit rows) is s(u) = softmax(W u / tau); the target code q of the other view is Sinkhorn-Knopp
of exp(W u2 / eps) over the global batch (and a queue of past embeddings), detached. Per pair,
l = -sum_k q_k log s_k(u), and (SPEC, "Beyond the paper: SwAV and DINO"):

    dl/du = (1 / tau) * (-W^T q + sum_k s_k w_k)

which is Table 2's row a term for term: the positive is the code mapped back onto the
prototypes, the negative a softmax-weighted sum over the sample set V_proto = {w_1 .. w_K}
(lambda = 1, scale 1/tau). The prototypes' own gradient, dl/dw_k = (1/tau)(s_k - q_k) u, is
not given by the surrogate of a gradient form; :func:`prototype_surrogate` supplies it. The
simplified row replaces -W^T q by the target embedding -u2^t (as SimCLR's eq. 20 -> 21).

The prototype cross-entropy, its gradient and the multi-crop pair weights here are shared with
DINO (:mod:`unigrad.methods.dino`), which differs only in how the code q is made.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unigrad.core import dist
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


# ------------------------------------------------------------------------ Sinkhorn-Knopp
@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor,
    eps: float = 0.05,
    iters: int = 3,
    shared: torch.Tensor | None = None,
    use_shared: bool | torch.Tensor = True,
) -> torch.Tensor:
    """Codes of SwAV's online clustering: Sinkhorn-Knopp on exp(scores / eps).

    The sums over samples run over the global batch (all-reduced over ranks) plus ``shared``
    rows (a queue held identically on every rank, counted once); each iteration gives every
    prototype an equal share of the mass, then every sample unit mass. The codes are kept in
    the scaling form Q = diag(a) P diag(b) of the kernel P = exp((S - max S) / eps) (the shift
    cancels in the first normalisation), in float32 or ``scores``' wider dtype: two
    matrix-vector products per iteration instead of two passes rewriting the [N + L, K] matrix.

    Args:
        scores: W u of this rank's samples, [N, K]. shared: W v of the queue, [L, K] or None.
        eps: entropic regularisation (SwAV: 0.05). iters: Sinkhorn iterations (SwAV: 3).
        use_shared: whether the ``shared`` rows take part: a bool, or a 0-d bool tensor (a
            schedule's value under ``compile: step``: the rows then enter with weight 0 or 1,
            no branch and no host read).

    Returns:
        codes q [N, K] of this rank's samples, rows summing to 1 (``scores``' dtype).
    """
    if use_shared is False:
        shared = None
    dtype = torch.promote_types(scores.dtype, torch.float32)
    rows = [scores.detach().to(dtype)]
    if shared is not None:
        rows.append(shared.detach().to(dtype))
    top = dist.all_reduce(torch.stack([r.max() for r in rows]).max(), "max")
    p = [torch.exp((r - top) / eps) for r in rows]  # P, the kernel: one pass, kept
    n_samples: float | torch.Tensor = float(rows[0].shape[0] * dist.world_size())
    on: torch.Tensor | None = None
    if shared is not None:
        on = torch.as_tensor(use_shared, device=p[0].device).to(dtype)
        n_samples = n_samples + shared.shape[0] * on
    k, tiny = p[0].shape[1], torch.finfo(dtype).tiny
    # Q = diag(a) P diag(b): each half-iteration rescales a or b by P's row or column sums
    # (two matrix-vector products), never rewriting the [N + L, K] matrix
    a = [torch.ones(r.shape[0], dtype=dtype, device=r.device) for r in p]
    b = torch.ones(k, dtype=dtype, device=p[0].device)
    for _ in range(iters):
        col = dist.all_reduce(p[0].T @ a[0])  # per prototype, over the global batch [K]
        if on is not None:
            col = col + on * (p[1].T @ a[1])  # the queue's rows, counted once, from its start
        b = 1.0 / (col * k).clamp_min(tiny)
        a = [1.0 / ((r @ b) * n_samples).clamp_min(tiny) for r in p]
    q = p[0] * b
    return (q / q.sum(1, keepdim=True).clamp_min(tiny)).to(scores.dtype)


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


class CodeQueue(nn.Module):
    """SwAV's queue: the last ``size`` embeddings [size, C] of each global view, gathered over
    ranks (identical on every rank, so Sinkhorn counts them once). It is filled from the first
    step and joins Sinkhorn from ``queue_start`` on once full (SwAV creates it at
    ``queue_start`` and uses it once full, ``size`` / batch steps later: the same rows, without
    the wait, and no branch on the epoch inside a compiled step).

    Buffers: ``queue`` [views, size, C], ``filled`` (rows written, <= size).
    """

    queue: torch.Tensor
    filled: torch.Tensor

    def __init__(self, size: int, dim: int, views: int = 2) -> None:
        super().__init__()
        self.register_buffer("queue", torch.zeros(views, size, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled = 0  # host copy: no device read per step
        self.register_load_state_dict_post_hook(lambda m, _: setattr(m, "_filled", int(m.filled)))

    @property
    def full(self) -> bool:
        return self._filled >= self.queue.shape[1]

    @torch.no_grad()
    def push(self, keys: list[torch.Tensor]) -> None:
        """Newest first: each view's queue becomes cat(keys[j], queue[j])[:size]."""
        size = self.queue.shape[1]
        new = torch.stack([k.detach().to(self.queue.dtype) for k in keys])[:, :size]
        self.queue.copy_(torch.cat([new, self.queue], dim=1)[:, :size])
        self._filled = min(self._filled + new.shape[1], size)
        self.filled.fill_(self._filled)


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


@dataclass(frozen=True)
class SwappedPrediction(PrototypeTerm):
    """SwAV: codes by Sinkhorn-Knopp over the global batch (and the queue once full)."""

    def modules(self, dim: int, hp: dict[str, Any]) -> dict[str, nn.Module]:
        parts: dict[str, nn.Module] = {"prototypes": Prototypes(int(hp["n_prototypes"]), dim)}
        if hp["queue_size"]:
            parts["queue"] = CodeQueue(int(hp["queue_size"]), dim)
        return parts

    def codes(self, step: Step, protos: Prototypes) -> list[torch.Tensor]:
        protos.renormalize_()
        w = protos.weight.detach()
        emb = [step.norm(t.detach()) for t in step.targets.pos]
        queue = dict(step.parts.items()).get("queue")  # a ModuleDict has no .get
        full = isinstance(queue, CodeQueue) and queue.full
        use = step.hp.get("queue_on", True)  # from queue_start on (a schedule)
        eps, iters = step.hp["eps"], int(step.hp["sinkhorn_iters"])
        codes = []
        for j, e in enumerate(emb):
            shared = queue.queue[j] @ w.T if full else None  # type: ignore[union-attr]
            codes.append(sinkhorn(e @ w.T, eps, iters, shared, use))
        if isinstance(queue, CodeQueue):  # filled from the start: full when it is first used
            queue.push([dist.gather_no_grad(e) for e in emb])
        return codes


# ------------------------------------------------------------------------------ spec
#: hyperparameters shared with DINO
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


#: per-epoch switches (read by the term from step.hp)
SWAV_SCHEDULES = {
    "queue_on": after_epochs("queue_start"),
    "train_prototypes": after_epochs("freeze_prototypes"),
}

SWAV = prototype_method(
    "swav",
    "SwAV: swapped prediction of Sinkhorn-Knopp codes over K prototypes",
    SwappedPrediction,
    code="q_SK(u2)",
    target="stopgrad",
    params={
        "n_prototypes": n_prototypes(3000),
        "eps": Param("Sinkhorn-Knopp's entropic regularisation", 0.05, lambda v: v > 0, "> 0"),
        "sinkhorn_iters": Param("Sinkhorn-Knopp iterations", 3, lambda v: v >= 1, ">= 1", int),
        "queue_size": Param(
            "rows of the queue of past embeddings per global view (0: none)",
            3840,
            lambda v: v >= 0,
            ">= 0",
            int,
        ),
        "queue_start": Param(
            "epoch from which the queue joins Sinkhorn (once full)", 50.0, lambda v: v >= 0, ">= 0"
        ),
        "freeze_prototypes": FREEZE.with_default(2.0),
    },
    needs=Needs(schedules=SWAV_SCHEDULES),
)

METHODS = [SWAV]


# ------------------------------------------------------------------- appendix-A style rows
def derivations(d: object) -> list[Row]:
    """Rows for ``unigrad check-gradients``: autograd of the loss form vs the closed form.

    ``d`` is the float64 synthetic batch of :mod:`unigrad.experiments.derivations` (``u1``,
    ``u2`` [N, C] unit rows, ``bank`` [K, C] unit rows, used as prototypes). Returns
    (name, method, kind, autograd, closed form, note) per row.
    """
    u1, u2, protos = d.u1, d.u2, d.bank  # type: ignore[attr-defined]
    n, tau = u1.shape[0], 0.1
    q = sinkhorn(u2 @ protos.T, eps=0.05, iters=3)
    w = protos.detach().clone().requires_grad_(True)
    u = u1.detach().clone().requires_grad_(True)
    du, dw = torch.autograd.grad(prototype_ce(u, w, q, tau), (u, w))
    g = grad_prototype_ce(u1, protos, q, tau) / n
    (dw_sur,) = torch.autograd.grad(prototype_surrogate(u1, w, q, tau), (w,))
    simple = grad_prototype_simplified(u1, u2, protos, tau) / n
    return [
        ("swav dl/du1", "swav", "exact", du, g, "(1/tau)(-W q + sum_k s_k w_k): row a, V_proto"),
        (
            "swav dl/dW",
            "swav",
            "exact",
            dw,
            dw_sur,
            "the prototypes' own gradient (1/tau)(s - q)^T u / N, from the added surrogate",
        ),
        (
            "swav -Wq -> -u2",
            "swav",
            "simplification",
            g,
            simple,
            "positive -u2^t instead of the code mapped onto the prototypes",
        ),
    ]


__all__ = [
    "derivations",
    "grad_prototype_ce",
    "grad_prototype_simplified",
    "pair_weights",
    "prototype_ce",
    "prototype_surrogate",
    "sinkhorn",
]

DERIVATIONS = [derivations]
