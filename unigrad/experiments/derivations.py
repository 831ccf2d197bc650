"""``unigrad check-gradients``: the paper's appendix A, verified numerically in float64.

For each derivation, the gradient of the loss form w.r.t. the online embedding u1 is computed by
autograd (targets treated as the paper treats them) and compared with the closed form. Exact
identities must agree to round-off; simplifications are reported as the cosine similarity
between the full and the simplified gradient (the paper's figure 3 shows the same quantity
along training; here it is measured on synthetic embeddings with positive pairs of cosine ~0.8).

The closed forms used for the exact rows are the functions of :mod:`unigrad.core.gradients` that the
gradient-form methods train with, so these checks also prove those methods right.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unigrad.core import gradients as G
from unigrad.core import losses as L
from unigrad.core.registry import DERIVATIONS
from unigrad.core.samples import directpred_predictor

EXACT_TOL = 1e-6


@dataclass
class Check:
    name: str
    method: str
    kind: str  # "exact" | "simplification"
    rel_error: float
    cosine: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.kind != "exact" or self.rel_error < EXACT_TOL

    def to_json(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("name", "method", "kind", "rel_error", "cosine")}


def compare(
    name: str, method: str, kind: str, a: torch.Tensor, b: torch.Tensor, note: str = ""
) -> Check:
    """rel_error = ||a - b|| / ||a||, cosine of the flattened tensors."""
    a, b = a.flatten(), b.flatten()
    rel = float((a - b).norm() / a.norm().clamp_min(1e-300))
    cos = float(F.cosine_similarity(a, b, dim=0))
    return Check(name, method, kind, rel, cos, note)


def autograd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x), x)
    return g


class Data:
    """Synthetic float64 embeddings: N samples, C channels, positives at cosine ~0.8."""

    def __init__(self, n: int = 32, c: int = 24, k: int = 64, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, dtype=torch.float64)

        scales = torch.linspace(2.0, 0.3, c, dtype=torch.float64)  # anisotropic, like real F
        base = randn(n, c) * scales
        self.z1 = base + 0.5 * randn(n, c) * scales
        self.z2 = base + 0.5 * randn(n, c) * scales
        self.u1 = F.normalize(self.z1, dim=-1)
        self.u2 = F.normalize(self.z2, dim=-1)
        self.bank = F.normalize(randn(k, c) * scales, dim=-1)
        past = F.normalize(randn(8 * n, c) * scales, dim=-1)
        self.corr = past.T @ past / past.shape[0]
        self.n, self.c = n, c


def _moco(d: Data, tau: float) -> list[Check]:
    auto = autograd(lambda u: L.info_nce(u, d.u2, d.bank, tau), d.u1)
    closed = G.grad_infonce(d.u1, d.u2, d.bank, tau) / d.n
    return [
        compare(
            "moco eq.18",
            "moco",
            "exact",
            auto,
            closed,
            "alg. 1's loss_neg '(weight@V_bank)*v1.sum(-1)' means "
            "'((weight@V_bank).detach()*u1).sum(-1)'",
        )
    ]


def _simclr(d: Data, tau: float) -> list[Check]:
    n = d.n
    mask = L.nt_xent_mask(n)

    def nt_xent_shared(u1: torch.Tensor) -> torch.Tensor:
        z = torch.cat([u1, d.u2])
        return L.info_nce(z, torch.cat([d.u2, u1]), z, tau, mask)

    def nt_xent_detached(u1: torch.Tensor) -> torch.Tensor:
        z = torch.cat([u1, d.u2])
        return L.info_nce(z, torch.cat([d.u2, u1]).detach(), z.detach(), tau, mask)

    # eq. 20: all four terms; t_v is anchor v's softmax evaluated at u1.
    z = torch.cat([d.u1, d.u2])
    logits = (z @ z.T / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    p = torch.softmax(logits, dim=1)  # p[a, b]: anchor a's weight on b (b != a)
    term_s = -d.u2 + p[:n] @ z
    term_t = -d.u2 + p[:, :n].T @ z
    eq20 = (term_s + term_t) / (tau * 2 * n)
    negs = z.detach()
    eq21 = G.grad_infonce(d.u1, d.u2, negs, tau, mask[:n]) / (2 * n)
    auto_shared = autograd(nt_xent_shared, d.u1)
    auto_det = autograd(nt_xent_detached, d.u1)
    scale = "NT-Xent averages 2N anchors, so eq. 20/21's 1/(tau N) reads 1/(tau 2N)"
    return [
        compare("simclr eq.20", "simclr", "exact", auto_shared, eq20, scale),
        compare("simclr eq.21", "simclr", "exact", auto_det, eq21, "targets detached"),
        compare(
            "simclr eq.20->21",
            "simclr",
            "simplification",
            eq20,
            eq21,
            "shared target: dropping the t_v terms (gradient through the target)",
        ),
    ]


def _directpred(d: Data, eps: float) -> list[Check]:
    w_h, sqrt_f, lam_max = directpred_predictor(d.corr, eps)
    auto = autograd(lambda u: L.directpred_loss(u, d.u2, w_h), d.u1)
    y = d.u1 @ w_h.T
    coef = (y * d.u2).sum(-1) / (y * y).sum(-1)  # u^T W^T u2 / u^T W^T W u
    eq24 = (-(d.u2 @ w_h) + coef[:, None] * (y @ w_h)) / (y.norm(dim=-1, keepdim=True) * d.n)

    def dp(variant: str) -> torch.Tensor:
        return G.grad_directpred(d.u1, d.u2, d.corr, w_h, sqrt_f, lam_max, eps, variant)[0] / d.n

    eq26, eq27, eq28 = dp("eq26"), dp("eq27"), dp("eq28")
    tangent = torch.eye(d.c, dtype=d.u1.dtype)[None] - d.u1[:, :, None] * d.u1[:, None, :]
    proj27 = (tangent @ eq27[:, :, None]).squeeze(-1)
    proj28 = (tangent @ eq28[:, :, None]).squeeze(-1)
    typo = (
        "eq. 7 and Table 2(d) print eps^2 I for eps^2 lambda_max^2 I; alg. 3 adds "
        "eps*lambda_max to every entry of W_h, eq. 23 to its diagonal (used here)"
    )
    return [
        compare("directpred eq.24", "directpred", "exact", auto, eq24),
        compare("directpred eq.26", "directpred", "exact", auto, eq26, typo),
        compare(
            "directpred eq.26->27",
            "directpred",
            "simplification",
            eq26,
            eq27,
            "drop 2 eps lambda_max F^1/2 u1",
        ),
        compare(
            "directpred eq.27->28",
            "directpred",
            "simplification",
            eq27,
            eq28,
            "drop eps^2 lambda_max^2 u1",
        ),
        compare(
            "directpred eq.27->28 (tangent)",
            "directpred",
            "exact",
            proj27,
            proj28,
            "after the l2-normalisation Jacobian (I - u u^T) the dropped term is 0",
        ),
    ]


def _barlow(d: Data, lambd: float) -> list[Check]:
    b1, b2 = L.batch_standardize(d.z1), L.batch_standardize(d.z2)
    w = L.cross_correlation(b1, b2)
    auto = autograd(lambda b: L.barlow_twins_loss(b, b2, lambd), b1)
    full = G.grad_barlow(b1, b2, w, lambd, full_a=True) / d.n
    ident = G.grad_barlow(b1, b2, w, lambd, full_a=False) / d.n
    return [
        compare(
            "barlow_twins eq.32",
            "barlow_twins",
            "exact",
            auto,
            full,
            "derivative w.r.t. the batch-normalised embedding",
        ),
        compare(
            "barlow_twins A->I", "barlow_twins", "simplification", full, ident, "Table 2 (f) -> (g)"
        ),
    ]


def _vicreg(d: Data) -> list[Check]:
    hp = {"sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0, "gamma": 1.0}
    lam = G.vicreg_balance(d.n, hp["sim_weight"], hp["cov_weight"])
    z1, z2 = d.z1 * 0.8, d.z2 * 0.8  # some channels below gamma: the variance hinge is active
    auto = autograd(lambda z: L.vicreg_loss(z, z2, **hp), z1)
    full = G.grad_vicreg(z1, z2, z1, lambd=lam, **hp) / d.n
    first = G.grad_vicreg(z1, z2, z1, lambd=lam, extra_term=False, **hp) / d.n
    return [
        compare(
            "vicreg eq.39",
            "vicreg",
            "exact",
            auto,
            full,
            "in VICReg's normalisation (mean over N*C): lambda = 2 w_cov N^2/(w_sim (N-1)^2); "
            "eq. 37 indexes v~ with j where k is meant",
        ),
        compare(
            "vicreg eq.39 drop last term",
            "vicreg",
            "simplification",
            full,
            first,
            "Table 2 (i) -> (j) without the l2 change",
        ),
    ]


def _unigrad(d: Data, lambd: float) -> list[Check]:
    auto = autograd(lambda u: L.unigrad_loss(u, d.u2, d.corr, lambd), d.u1)
    closed = G.grad_correlation(d.u1, d.u2, d.corr, lambd) / d.n
    return [
        compare(
            "unigrad eq.14",
            "unigrad",
            "exact",
            auto,
            closed,
            "gradient of eq. 15; alg. 6's '(u1@F)*u1.sum(-1)' means '((u1@F)*u1).sum(-1)'",
        )
    ]


def run_checks(seed: int = 0, n: int = 32, c: int = 24) -> list[Check]:
    """All derivations on one synthetic batch (float64): appendix A's, then the rows the
    method files registered (:data:`unigrad.core.registry.DERIVATIONS`; SwAV, DINO)."""
    import unigrad.methods  # noqa: F401  (fills the registry)

    d = Data(n=n, c=c, seed=seed)
    return [
        *_moco(d, tau=0.2),
        *_simclr(d, tau=0.2),
        *_directpred(d, eps=0.3),
        *_barlow(d, lambd=5e-3),
        *_vicreg(d),
        *_unigrad(d, lambd=100.0 * c / 2048),
        *(compare(*row) for fn in DERIVATIONS for row in fn(d)),
    ]


def format_table(checks: list[Check]) -> str:
    head = f"{'derivation':<36} {'method':<13} {'kind':<15} {'rel. error':>10} {'cosine':>8}  ok"
    lines = [head, "-" * len(head)]
    notes = []
    for ch in checks:
        mark = "yes" if ch.kind == "exact" and ch.ok else ("NO" if not ch.ok else "-")
        ref = ""
        if ch.note:
            notes.append(ch.note)
            ref = f" [{len(notes)}]"
        lines.append(
            f"{ch.name + ref:<36} {ch.method:<13} {ch.kind:<15} {ch.rel_error:>10.2e} "
            f"{ch.cosine:>8.4f}  {mark}"
        )
    lines.append("")
    lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines)
