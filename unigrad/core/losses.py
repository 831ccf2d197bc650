"""Loss forms: each method's original objective, written on plain tensors.

Conventions: ``u``/``t`` are l2-normalised embeddings [N, C] (cosine = dot product, as in the
paper's derivations), ``b`` are batch-standardised embeddings (Barlow Twins), ``z`` raw
projector outputs (VICReg). Directional losses (one view predicting the other) are written for
one direction; :mod:`unigrad.core.objective` symmetrises them in one place. Losses that already see
both views at once (NT-Xent over 2N, Barlow Twins, VICReg) are symmetric by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    u: torch.Tensor,
    pos: torch.Tensor,
    negs: torch.Tensor,
    tau: float,
    neg_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE, paper eq. 1 / 16: mean_i -log softmax([u_i.pos_i, u_i.negs] / tau)[0].

    MoCo: ``negs`` is the memory bank [K, C]. SimCLR (NT-Xent over 2N views): ``u`` holds all 2N
    anchors, ``negs`` all 2N candidates and ``neg_mask`` [2N, 2N] (True = excluded) removes each
    anchor's own entry and its positive (the positive enters once, through ``pos``).

    Args:
        u: anchors [N, C]; pos: positives [N, C]; negs: [K, C]; neg_mask: [N, K] or None.
    """
    logits = infonce_logits(u, pos, negs, neg_mask) / tau
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def infonce_logits(
    u: torch.Tensor, pos: torch.Tensor, negs: torch.Tensor, neg_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """[u_i.pos_i, u_i.negs] -> [N, 1 + K], masked negatives at -inf (positive in column 0)."""
    l_neg = u @ negs.T
    if neg_mask is not None:
        l_neg = l_neg.masked_fill(neg_mask, float("-inf"))
    return torch.cat([(u * pos).sum(-1, keepdim=True), l_neg], dim=1)


def nt_xent_mask(n: int, device: torch.device | None = None) -> torch.Tensor:
    """[2n, 2n] mask for NT-Xent: True at each anchor's own index and at its positive.

    Row a < n is view 1 of sample a (positive a + n); row a >= n is view 2 (positive a - n).
    """
    idx = torch.arange(2 * n, device=device)
    mask = torch.eye(2 * n, dtype=torch.bool, device=device)
    mask[idx, (idx + n) % (2 * n)] = True
    return mask


def negative_cosine(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -mean_i cos(q_i, t_i) for unit vectors q, t [N, C]."""
    return -(q * t).sum(-1).mean()


def byol_loss(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """BYOL's mean_i ||q_i - t_i||^2 = 2 - 2 cos(q_i, t_i) for unit vectors [N, C]."""
    return 2.0 + 2.0 * negative_cosine(q, t)


def directpred_loss(u: torch.Tensor, t: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
    """Eq. 22: -mean_i cos(W_h u_i, t_i), with the computed (symmetric) predictor W_h [C, C]."""
    return negative_cosine(F.normalize(u @ w_h.T, dim=-1), t)


def batch_standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """BatchNorm1d without affine, training mode: (z - mean) / sqrt(var_biased + eps), [N, C]."""
    mean = z.mean(0, keepdim=True)
    var = z.var(0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """W = b1^T b2 / N, [C, C] (eq. 8)."""
    return b1.T @ b2 / b1.shape[0]


def barlow_twins_loss(b1: torch.Tensor, b2: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Eq. 8 / 29: sum_i (W_ii - 1)^2 + lambda * sum_{i != j} W_ij^2, W = b1^T b2 / N.

    ``b1``, ``b2`` [N, C] are batch-standardised (:func:`batch_standardize`) over the *global*
    batch; the value is the same whichever view is called first (W^T swaps them).
    """
    w = cross_correlation(b1, b2)
    diag = torch.diagonal(w)
    on = (diag - 1).pow(2).sum()
    off = w.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg (eq. 10) with its authors' normalisation, on raw embeddings [N, C]:

    sim_w * mean((z1 - z2)^2) + var_w * (mean_k relu(gamma - std1_k) + same for z2) / 2
    + cov_w * (sum_{i != j} Cov1_ij^2 + same for z2) / C, std = sqrt(var_unbiased + eps).
    """
    c = z1.shape[1]
    inv = F.mse_loss(z1, z2)
    var = 0.0
    cov = 0.0
    for z in (z1, z2):
        zc = z - z.mean(0)
        std = torch.sqrt(zc.var(0) + eps)
        var = var + torch.relu(gamma - std).mean() / 2
        w = zc.T @ zc / (z.shape[0] - 1)
        cov = cov + (w.pow(2).sum() - torch.diagonal(w).pow(2).sum()) / c
    return sim_weight * inv + var_weight * var + cov_weight * cov


def unigrad_loss(
    u: torch.Tensor, t: torch.Tensor, corr: torch.Tensor, lambd: float
) -> torch.Tensor:
    """Eq. 15 for one direction: mean_i [-u_i.t_i + lambda/2 * u_i^T F u_i], F detached.

    Its gradient w.r.t. u is eq. 14, (-t + lambda * F u) / N. (Algorithm 6 prints
    ``(u1@F)*u1.sum(-1)``; the intended quantity is ``((u1 @ F) * u1).sum(-1)``.)
    """
    corr = corr.detach()
    return (-(u * t).sum(-1) + 0.5 * lambd * ((u @ corr) * u).sum(-1)).mean()
