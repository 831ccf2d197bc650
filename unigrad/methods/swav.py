"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of online codes over K prototypes.

The target code q of a view is Sinkhorn-Knopp of exp(W u2 / eps) over the global batch (and a
queue of past embeddings), detached; the rest (the cross-entropy against q, its gradient
forms, the prototypes) is the family's, :mod:`unigrad.methods.prototypes`:

    dl/du = (1 / tau) * (-W^T q + sum_k s_k w_k)      (Table 2's row a, V_proto)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unigrad.core import dist
from unigrad.core.needs import Needs
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


__all__ = ["SWAV", "CodeQueue", "SwappedPrediction", "derivations", "sinkhorn"]

DERIVATIONS = [derivations]
