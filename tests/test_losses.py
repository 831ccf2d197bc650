"""Loss forms against independent re-derivations from the papers' equations (loops, no reuse)."""

import math

import pytest
import torch
import torch.nn.functional as F

from unigrad.core import losses as L


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_info_nce_matches_eq1_written_out():
    u, pos, bank = unit(5, 4, seed=1), unit(5, 4, seed=2), unit(7, 4, seed=3)
    tau = 0.3
    total = 0.0
    for i in range(5):
        num = math.exp(float(u[i] @ pos[i]) / tau)
        den = num + sum(math.exp(float(u[i] @ v) / tau) for v in bank)
        total += -math.log(num / den)
    assert math.isclose(float(L.info_nce(u, pos, bank, tau)), total / 5, rel_tol=1e-12)


def test_nt_xent_over_2n_views_written_out():
    n, tau = 4, 0.2
    u1, u2 = unit(n, 3, seed=4), unit(n, 3, seed=5)
    z = torch.cat([u1, u2])
    loss = L.info_nce(z, torch.cat([u2, u1]), z, tau, L.nt_xent_mask(n))
    total = 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        den = sum(math.exp(float(z[a] @ z[b]) / tau) for b in range(2 * n) if b != a)
        total += -math.log(math.exp(float(z[a] @ z[p]) / tau) / den)
    assert math.isclose(float(loss), total / (2 * n), rel_tol=1e-12)


def test_nt_xent_mask_marks_self_and_positive_only():
    m = L.nt_xent_mask(3)
    assert m.sum() == 12
    assert m[0, 0] and m[0, 3] and m[4, 1] and not m[0, 1]


def test_byol_and_simsiam_hand_values():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # cos = 1 and 0
    assert math.isclose(float(L.negative_cosine(q, t)), -0.5)
    assert math.isclose(float(L.byol_loss(q, t)), ((2 - 2) + (2 - 0)) / 2)


def test_directpred_identity_predictor_is_negative_cosine():
    u, t = unit(6, 5, seed=6), unit(6, 5, seed=7)
    w = 3.0 * torch.eye(5)  # any positive multiple of I leaves the cosine unchanged
    assert torch.allclose(L.directpred_loss(u, t, w), L.negative_cosine(u, t))


def test_batch_standardize_is_batchnorm_without_affine():
    z = torch.randn(16, 6)
    bn = torch.nn.BatchNorm1d(6, affine=False).double().train()
    assert torch.allclose(L.batch_standardize(z), bn(z), atol=1e-12)


def test_barlow_twins_eq8_written_out():
    b1, b2 = torch.randn(6, 3), torch.randn(6, 3)
    lam = 0.1
    total = 0.0
    for i in range(3):
        for j in range(3):
            w = sum(float(b1[n, i] * b2[n, j]) for n in range(6)) / 6
            total += (w - 1) ** 2 if i == j else lam * w**2
    assert math.isclose(float(L.barlow_twins_loss(b1, b2, lam)), total, rel_tol=1e-12)


def test_barlow_twins_identical_views_has_zero_diagonal_term():
    b = L.batch_standardize(torch.randn(64, 8), eps=0.0)
    w = L.cross_correlation(b, b)
    assert torch.allclose(torch.diagonal(w), torch.ones(8))
    # only the off-diagonal part is left
    off = float(w.pow(2).sum() - torch.diagonal(w).pow(2).sum())
    assert math.isclose(float(L.barlow_twins_loss(b, b, 0.5)), 0.5 * off, rel_tol=1e-10)


def test_vicreg_written_out():
    z1, z2 = torch.randn(5, 3), torch.randn(5, 3) * 0.3
    s, v, c, gamma, eps = 25.0, 25.0, 1.0, 1.0, 1e-4
    n, d = 5, 3
    inv = sum(float((z1[i, k] - z2[i, k]) ** 2) for i in range(n) for k in range(d)) / (n * d)
    var = 0.0
    cov = 0.0
    for z in (z1, z2):
        mean = [sum(float(z[i, k]) for i in range(n)) / n for k in range(d)]
        cm = [
            [
                sum((float(z[i, a]) - mean[a]) * (float(z[i, b]) - mean[b]) for i in range(n))
                / (n - 1)
                for b in range(d)
            ]
            for a in range(d)
        ]
        var += sum(max(0.0, gamma - math.sqrt(cm[k][k] + eps)) for k in range(d)) / d / 2
        cov += sum(cm[a][b] ** 2 for a in range(d) for b in range(d) if a != b) / d
    expected = s * inv + v * var + c * cov
    assert math.isclose(float(L.vicreg_loss(z1, z2, s, v, c, gamma, eps)), expected, rel_tol=1e-10)


def test_vicreg_identical_wide_views_only_covariance_remains():
    z = torch.randn(256, 4) * 5  # std >> 1: hinge inactive; same views: invariance 0
    loss = L.vicreg_loss(z, z, 25, 25, 1)
    zc = z - z.mean(0)
    cm = zc.T @ zc / 255
    expected = 2 * (cm.pow(2).sum() - torch.diagonal(cm).pow(2).sum()) / 4
    assert torch.allclose(loss, expected)


def test_unigrad_eq15_written_out():
    u, t = unit(4, 3, seed=8), unit(4, 3, seed=9)
    v = unit(10, 3, seed=10)
    corr = v.T @ v / 10
    lam = 7.0
    total = 0.0
    for i in range(4):
        neg = sum(float(u[i] @ v[k]) ** 2 for k in range(10)) / 10  # sum_v rho_v cos^2
        total += -float(u[i] @ t[i]) + lam / 2 * neg
    assert math.isclose(float(L.unigrad_loss(u, t, corr, lam)), total / 4, rel_tol=1e-12)


def test_unigrad_loss_minimum_at_positive_for_lambda_zero():
    u = unit(3, 4, seed=11)
    assert math.isclose(float(L.unigrad_loss(u, u, torch.eye(4), 0.0)), -1.0)
