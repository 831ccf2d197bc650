"""Gradient forms: dL/du1 = scale * (positive + lambda * negative), paper eq. 13 / Table 2.

Every function returns ``g`` [N, C] for one direction (view 1 predicting view 2), already
detached, such that the gradient of the mean loss is g / N. :func:`surrogate` turns ``g`` into a
scalar whose autograd gradient w.r.t. ``u`` is exactly g / N; the value itself is meaningless.

Shapes: u [N, C] online anchors of this rank; pos [N, C] their positives (u2^t); sets gathered
over ranks are [M, C]. All inputs are taken as they come (normalisation happens before).
"""

from __future__ import annotations

import torch

from unigrad.core.losses import infonce_logits


def surrogate(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(g.detach() * u).sum(-1).mean(): d/du = g / N."""
    return (g.detach() * u).sum(-1).mean()


@torch.no_grad()
def grad_infonce(
    u: torch.Tensor,
    pos: torch.Tensor,
    negs: torch.Tensor,
    tau: float,
    neg_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows (a) MoCo and (b) SimCLR, eq. 18 / 21: (1/tau) * (-pos + sum_v s_v v).

    s = softmax over {pos} and ``negs`` (the positive included, masked entries excluded) of
    u.v / tau. For MoCo ``negs`` is the bank; for SimCLR the 2N target embeddings of the batch
    with the anchor's own entry and its positive masked.
    """
    s = torch.softmax(infonce_logits(u, pos, negs, neg_mask) / tau, dim=1)
    neg = s[:, :1] * pos + s[:, 1:] @ negs
    return (neg - pos) / tau


@torch.no_grad()
def grad_correlation(
    u: torch.Tensor, pos: torch.Tensor, corr: torch.Tensor, lambd: float
) -> torch.Tensor:
    """Eq. 14 (UniGrad, row e) and row (j): -pos + lambda * F u.

    ``corr`` is F: the EMA correlation matrix (V_infinity; UniGrad, row e) or the current batch's
    sum_v v v^T / N (V_batch; row j: sum_v (u.v / N) v = F_batch u).
    """
    return -pos + lambd * (u @ corr)


@torch.no_grad()
def grad_barlow(
    u: torch.Tensor,
    pos: torch.Tensor,
    w: torch.Tensor,
    lambd: float,
    full_a: bool,
) -> torch.Tensor:
    """Rows (f), (g), (h), eq. 32: 2 * (-A pos + lambda * sum_v (pos.v2 / N) v1).

    ``w`` = v1^T v2 / N is the cross-correlation of the batch (online view 1, target view 2),
    so sum_v (pos.v2 / N) v1 = W pos. A = I - (1 - lambda) diag(W) when ``full_a`` (row f), else
    A = I (rows g, h).
    """
    a = 1.0 - (1.0 - lambd) * torch.diagonal(w) if full_a else 1.0
    return 2.0 * (-a * pos + lambd * (pos @ w.T))


def vicreg_balance(n: int, sim_weight: float, cov_weight: float) -> float:
    """lambda of eq. 39 in VICReg's own normalisation: 2 * w_cov * N^2 / (w_sim * (N - 1)^2)."""
    return 2.0 * cov_weight * n**2 / (sim_weight * (n - 1) ** 2)


@torch.no_grad()
def grad_vicreg(
    u: torch.Tensor,
    pos: torch.Tensor,
    v: torch.Tensor,
    *,
    lambd: float,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    extra_term: bool = True,
) -> torch.Tensor:
    """Row (i), eq. 39, for :func:`unigrad.core.losses.vicreg_loss`'s normalisation (mean over N*C):

    (2 w_sim / C) * (-pos + lambda * sum_v (u~.v~ / N) v~ + [u - lambda * B u~]),
    B = N / (2 w_sim lambda (N-1)) * (4 w_cov W'_diag + w_var/2 * diag(1[gamma > std] / std)),
    v~ the de-centred batch ``v`` [M, C] of online view-1 embeddings (u's rows among them),
    W' its covariance. With ``lambd`` = :func:`vicreg_balance` this is exactly VICReg's gradient
    w.r.t. u; ``extra_term=False`` drops the bracket (the simplification toward row j).
    """
    n, c = v.shape
    mean = v.mean(0, keepdim=True)
    vt = v - mean
    ut = u - mean
    neg = (ut @ vt.T / n) @ vt
    g = -pos + lambd * neg
    if extra_term:
        var = vt.var(0)
        std = torch.sqrt(var + eps)
        hinge = (gamma - std > 0).to(u.dtype) / std
        b = n / (2 * sim_weight * lambd * (n - 1)) * (4 * cov_weight * var + var_weight / 2 * hinge)
        g = g + u - lambd * b * ut
    return (2.0 * sim_weight / c) * g


@torch.no_grad()
def grad_directpred(
    u: torch.Tensor,
    pos: torch.Tensor,
    corr: torch.Tensor,
    w_h: torch.Tensor,
    sqrt_corr: torch.Tensor,
    lam_max: torch.Tensor,
    eps: float,
    variant: str = "eq28",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row (d): DirectPred's gradient, eq. 26 (exact, = eq. 24), eq. 27 or eq. 28.

    g = (1 / ||W_h u||) * (-W_h pos + lambda~ * M u) with
      eq26: M = F + 2 eps lam_max F^1/2 + eps^2 lam_max^2 I  (= W_h^T W_h, eq. 25)
      eq27: M = F + eps^2 lam_max^2 I
      eq28: M = F, lambda~ keeps eq. 27's denominator (the eps^2 term only drops from M u)
    lambda~ = (u^T W_h pos) / (u^T M' u), M' = M for eq26/eq27 and F + eps^2 lam_max^2 I for eq28.
    (The paper's eq. 7 and Table 2(d) print eps^2 without lam_max^2; eq. 27 keeps it.)

    Returns (g [N, C], lambda~ [N]).
    """
    c = corr.shape[0]
    eye = torch.eye(c, dtype=corr.dtype, device=corr.device)
    e2 = (eps * lam_max) ** 2
    if variant == "eq26":
        m = corr + 2 * eps * lam_max * sqrt_corr + e2 * eye
        m_den = m
    elif variant == "eq27":
        m = corr + e2 * eye
        m_den = m
    elif variant == "eq28":
        m = corr
        m_den = corr + e2 * eye
    else:
        raise ValueError(f"unknown DirectPred gradient variant {variant!r} (eq26, eq27, eq28)")
    wpos = pos @ w_h.T  # W_h pos (W_h symmetric)
    lam = (u * wpos).sum(-1) / ((u @ m_den) * u).sum(-1)
    scale = 1.0 / (u @ w_h.T).norm(dim=-1)
    g = scale[:, None] * (-wpos + lam[:, None] * (u @ m.T))
    return g, lam
