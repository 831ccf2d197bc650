"""Training diagnostics on a fixed probe batch (paper fig. 2 and 3, SimSiam fig. 2).

Pure tensor functions plus one entry point, :func:`probe_diagnostics`, that the trainer calls
every ``diag_every`` steps and logs with a ``diag/`` prefix. All of it runs without gradients
and costs about 15 ms for a 256 x 512 probe on 2 CPU cores (see :func:`probe_diagnostics`).
The spectrum of UniGrad's F is written separately (:func:`write_spectrum`), once per epoch.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unigrad.core.gradients import grad_directpred
from unigrad.core.losses import batch_standardize
from unigrad.core.samples import directpred_predictor

SPECTRUM_FILE = "spectrum.csv"
SPECTRUM_HEADER = ("step", "index", "value")


def mean_pos_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine of the positive pairs (a_i, b_i); a, b: [N, C] (any scale)."""
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def mean_neg_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine of a_i and b_j over all i != j (embeddings of different images), in O(N C):
    sum_{i != j} a_i . b_j = (sum_i a_i) . (sum_j b_j) - sum_i a_i . b_i, on unit rows.

    Args:
        a, b: [N, C], N >= 2.
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    n = a.shape[0]
    off = a.sum(0) @ b.sum(0) - (a * b).sum()
    return float(off / (n * (n - 1)))


def pca_spectrum(u: torch.Tensor) -> torch.Tensor:
    """PCA eigenvalues of u [N, C] (centred), descending, length min(N, C).

    From the smaller of the covariance [C, C] and the Gram matrix [N, N] (same non-zero
    eigenvalues); a symmetric eigensolver is about twice as fast as an SVD here.
    """
    x = u - u.mean(0, keepdim=True)
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0) / max(u.shape[0] - 1, 1)


def pc_count(eigenvalues: torch.Tensor, share: float = 0.9) -> int:
    """How many of the largest eigenvalues it takes until their cumulative share first exceeds
    ``share`` (paper fig. 2). A spectrum with no variance at all (complete collapse) counts 1."""
    ev = eigenvalues.double().clamp_min(0).sort(descending=True).values
    total = ev.sum()
    if total <= 0:
        return 1
    cum = ev.cumsum(0) / total
    return min(int((cum <= share).sum()) + 1, ev.numel())


def pc_ratio(u: torch.Tensor, share: float = 0.9) -> tuple[int, float]:
    """Principal-component ratio of the l2-normalised embeddings u [N, C].

    Returns:
        (count: number of PCA eigenvalues whose cumulative share first exceeds ``share``, in
        1..min(N, C); fraction: count / C). Collapse to a line gives 1; isotropic embeddings
        give about ``share`` x C (when N >> C).
    """
    count = pc_count(pca_spectrum(F.normalize(u.float(), dim=-1)), share)
    return count, count / u.shape[1]


def rankme(u: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe of an embedding matrix u [N, C] (Garrido et al. 2023, eq. 1): the exponential of
    the entropy of its singular values normalised to sum 1, ``p_k = s_k / sum(s) + eps``.

    A smooth count of the directions the embeddings use, in [1, min(N, C)]: k equal non-zero
    singular values give k; complete collapse (rank 1) gives 1. Raw rows, no centring. The
    singular values are the square roots of the eigenvalues of the smaller Gram matrix, in
    float64 (a symmetric eigensolver: about 5x faster than an SVD for 256 x 512).
    """
    x = u.double()
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    p = s / s.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def channel_std(u: torch.Tensor) -> float:
    """Per-channel std of the l2-normalised output u [N, C], averaged over channels (SimSiam
    fig. 2): 0 at collapse, about 1/sqrt(C) for isotropic (healthy) embeddings."""
    return float(F.normalize(u.float(), dim=-1).std(dim=0).mean())


def barlow_diag(z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, float]:
    """Max and min of diag(W), W = b1^T b2 / N, b = batch-standardised z [N, C] (Barlow Twins
    eq. 8; the diagonal alone, in O(N C)). 1 = perfectly invariant channel."""
    d = (batch_standardize(z1.float()) * batch_standardize(z2.float())).mean(0)
    return float(d.max()), float(d.min())


def directpred_lambda(
    u: torch.Tensor, pos: torch.Tensor, corr: torch.Tensor, eps: float, variant: str = "eq28"
) -> float:
    """Mean of DirectPred's dynamic balance factor lambda~ (Table 2 d, eq. 7 / 27 / 28).

    Args:
        u: online embeddings [N, C]; pos: their positives (target embeddings) [N, C], both
            l2-normalised here; corr: the EMA correlation matrix F [C, C]; eps: DirectPred's eps.
    """
    u, pos = F.normalize(u.float(), dim=-1), F.normalize(pos.float(), dim=-1)
    w_h, sqrt_f, lam_max = directpred_predictor(corr.float(), eps)
    _, lam = grad_directpred(u, pos, corr.float(), w_h, sqrt_f, lam_max, eps, variant)
    return float(lam.mean())


def corr_spectrum(corr: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric matrix such as UniGrad's F [C, C], descending, [C]."""
    return torch.linalg.eigvalsh((corr + corr.T) / 2).flip(0)


@torch.no_grad()
def probe_diagnostics(
    online: list[torch.Tensor], targets: list[torch.Tensor], extra: dict[str, Any] | None = None
) -> dict[str, float]:
    """All diagnostics of one probe batch, keys without the ``diag/`` prefix.

    Args:
        online: projector outputs of the online branch for the 2 views, [N, C] each (raw).
        targets: target-branch outputs for the same 2 views, [N, C] each (for a shared or
            stop-gradient target, the online outputs themselves).
        extra: optional ``corr`` (the EMA correlation matrix F [C, C]: adds ``f_eig_max``,
            ``f_eig_min``); ``lambda_dyn`` (DirectPred's per-sample lambda~ [N] from the
            objective: adds its mean) or else ``directpred_eps`` with ``corr`` (computes it).

    Returns:
        ``pos_cos`` (mean cos(online_v, target_other_v)), ``neg_cos`` (same, different images),
        ``pc_ratio`` (count, see :func:`pc_ratio`; over both online views), ``pc_frac``
        (pc_ratio / C), ``rankme`` (:func:`rankme` of the same 2N x C matrix, raw),
        ``channel_std`` (online), ``bt_diag_max`` / ``bt_diag_min``
        (:func:`barlow_diag` of online view 1 and target view 2).

    Cost on 2 shared CPU cores for N = 256, C = 512: about 15 ms (the PCA eigensolver
    dominates; RankMe adds one more eigensolver of the same size); with ``corr`` about 25 ms;
    computing ``lambda_dyn`` from ``corr`` about 70 ms (an eigendecomposition in float64), so
    pass the objective's ``lambda_dyn`` when it has it.
    """
    extra = extra or {}
    o1, o2 = (x.float() for x in online[:2])
    t1, t2 = (x.float() for x in targets[:2])
    both = torch.cat([o1, o2])
    count, frac = pc_ratio(both)
    out = {
        "pos_cos": (mean_pos_cos(o1, t2) + mean_pos_cos(o2, t1)) / 2,
        "neg_cos": (mean_neg_cos(o1, t2) + mean_neg_cos(o2, t1)) / 2,
        "pc_ratio": float(count),
        "pc_frac": frac,
        "rankme": rankme(both),
        "channel_std": channel_std(both),
    }
    out["bt_diag_max"], out["bt_diag_min"] = barlow_diag(o1, t2)
    corr = extra.get("corr")
    if corr is not None:
        ev = corr_spectrum(corr)
        out["f_eig_max"], out["f_eig_min"] = float(ev[0]), float(ev[-1])
    if extra.get("lambda_dyn") is not None:
        out["lambda_dyn"] = float(torch.as_tensor(extra["lambda_dyn"]).float().mean())
    elif corr is not None and extra.get("directpred_eps") is not None:
        out["lambda_dyn"] = directpred_lambda(o1, t2, corr, float(extra["directpred_eps"]))
    return out


def write_spectrum(run_dir: str | Path, step: int, eigenvalues: torch.Tensor) -> Path:
    """Append one spectrum (e.g. :func:`corr_spectrum` of F) to ``RUN/spectrum.csv``.

    Long format, header ``step,index,value`` (index 0 = largest). C rows per call: call it once
    per epoch, not every diagnostics step.
    """
    path = Path(run_dir) / SPECTRUM_FILE
    path.parent.mkdir(parents=True, exist_ok=True)  # train() alone (no fit()) opens no run dir
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(SPECTRUM_HEADER)
        w.writerows((step, i, f"{v:.8g}") for i, v in enumerate(eigenvalues.tolist()))
    return path


def read_spectrum(path: str | Path) -> dict[int, torch.Tensor]:
    """``spectrum.csv`` -> {step: eigenvalues [C] ordered by index}."""
    rows: dict[int, dict[int, float]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(int(r["step"]), {})[int(r["index"])] = float(r["value"])
    return {s: torch.tensor([d[i] for i in sorted(d)]) for s, d in sorted(rows.items())}


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Forward in training mode without touching BN running statistics (diagnostics probe)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
        for m in bns
    ]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, nbt) in zip(bns, saved, strict=True):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)
