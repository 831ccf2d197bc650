import math

import pytest
import torch
import torch.nn.functional as F

from unigrad.eval.diagnostics import (
    SPECTRUM_FILE,
    barlow_diag,
    channel_std,
    corr_spectrum,
    directpred_lambda,
    mean_neg_cos,
    mean_pos_cos,
    pc_count,
    pc_ratio,
    probe_diagnostics,
    read_spectrum,
    write_spectrum,
)


def gaussian(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed))


def test_collapsed_embeddings_have_one_component_and_zero_std():
    point = torch.randn(1, 16).expand(64, 16)
    assert pc_ratio(point) == (1, 1 / 16)
    assert channel_std(point) == pytest.approx(0.0, abs=1e-6)
    # collapse onto a line: +-d with a random scale still spans a single direction
    d = torch.randn(16)
    line = torch.randn(64, 1).sign() * d * (1 + torch.rand(64, 1))
    assert pc_ratio(line)[0] == 1


def test_isotropic_embeddings_need_about_90_percent_of_the_components():
    c = 32
    count, frac = pc_ratio(gaussian(8192, c))
    assert 0.8 * c <= count <= 0.95 * c
    assert frac == count / c
    assert channel_std(gaussian(8192, c)) == pytest.approx(1 / math.sqrt(c), rel=0.03)


def test_pc_count_threshold_is_first_exceeding_share():
    ev = torch.tensor([0.5, 0.3, 0.1, 0.1])  # cumulative 0.5, 0.8, 0.9, 1.0
    assert pc_count(ev, 0.9) == 4  # 0.9 does not *exceed* 0.9
    assert pc_count(ev, 0.85) == 3
    assert pc_count(ev, 0.4) == 1
    assert pc_count(torch.zeros(5)) == 1


def test_low_rank_embeddings_count_their_rank():
    basis = F.normalize(gaussian(5, 64, seed=1), dim=1)
    u = gaussian(500, 5, seed=2) @ basis * 10  # 5 independent directions, equal variance-ish
    count, _ = pc_ratio(u + 1e-4 * gaussian(500, 64, seed=3))
    assert 3 <= count <= 5


def test_similarities_match_brute_force():
    a, b = gaussian(7, 5, 1), gaussian(7, 5, 2)
    cos = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    off = ~torch.eye(7, dtype=torch.bool)
    assert mean_neg_cos(a, b) == pytest.approx(float(cos[off].mean()), abs=1e-6)
    assert mean_pos_cos(a, b) == pytest.approx(float(cos.diagonal().mean()), abs=1e-6)
    assert mean_pos_cos(a, 3 * a) == pytest.approx(1.0)
    same = torch.ones(4, 3)
    assert mean_neg_cos(same, same) == pytest.approx(1.0)


def test_barlow_diag_is_one_for_identical_views():
    z = gaussian(256, 8)
    hi, lo = barlow_diag(z, 2 * z + 1)  # batch standardisation removes scale and shift
    assert hi == pytest.approx(1.0, abs=1e-3) and lo == pytest.approx(1.0, abs=1e-3)
    hi, lo = barlow_diag(z, gaussian(256, 8, seed=5))
    assert abs(hi) < 0.3 and abs(lo) < 0.3


def test_directpred_lambda_for_isotropic_corr():
    # F = I / C: W_h = (1/sqrt(C) + eps * lam_max) I, lam_max = 1/C, so (eq. 27/28)
    # lambda~ = (1/sqrt(C) + eps/C) cos(u, pos) / (1/C + eps^2/C^2)
    c, eps = 16, 0.3
    u, pos = gaussian(10, c, 1), gaussian(10, c, 2)
    cos = F.cosine_similarity(u, pos, dim=1)
    w = 1 / math.sqrt(c) + eps / c
    expected = float((w * cos / (1 / c + eps**2 / c**2)).mean())
    assert directpred_lambda(u, pos, torch.eye(c) / c, eps) == pytest.approx(expected, rel=1e-4)


def test_corr_spectrum_is_sorted_eigenvalues():
    q, _ = torch.linalg.qr(gaussian(6, 6))
    ev = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.0, 0.15])
    f = q @ torch.diag(ev) @ q.T
    torch.testing.assert_close(corr_spectrum(f), ev.sort(descending=True).values, atol=1e-6, rtol=0)


def test_probe_diagnostics_keys_and_values():
    z = gaussian(64, 16)
    online = [z, z + 0.01 * gaussian(64, 16, 1)]
    out = probe_diagnostics(online, [online[0].clone(), online[1].clone()])
    assert set(out) == {
        "pos_cos",
        "neg_cos",
        "pc_ratio",
        "pc_frac",
        "rankme",
        "channel_std",
        "bt_diag_max",
        "bt_diag_min",
    }
    assert all(isinstance(v, float) for v in out.values())
    assert out["pos_cos"] == pytest.approx(1.0, abs=1e-3)
    assert abs(out["neg_cos"]) < 0.1
    assert out["pc_frac"] == out["pc_ratio"] / 16
    corr = torch.eye(16) / 16
    with_f = probe_diagnostics(online, online, {"corr": corr, "directpred_eps": 0.3})
    assert with_f["f_eig_max"] == pytest.approx(1 / 16) == with_f["f_eig_min"]
    assert with_f["lambda_dyn"] == pytest.approx(directpred_lambda(online[0], online[1], corr, 0.3))
    given = probe_diagnostics(online, online, {"lambda_dyn": torch.tensor([1.0, 3.0])})
    assert given["lambda_dyn"] == 2.0


def test_spectrum_file_round_trip(tmp_path):
    write_spectrum(tmp_path, 10, torch.tensor([0.5, 0.3, 0.2]))
    write_spectrum(tmp_path, 20, torch.tensor([0.7, 0.2, 0.1]))
    lines = (tmp_path / SPECTRUM_FILE).read_text().splitlines()
    assert lines[0] == "step,index,value" and len(lines) == 7
    spectra = read_spectrum(tmp_path / SPECTRUM_FILE)
    assert list(spectra) == [10, 20]
    torch.testing.assert_close(spectra[20], torch.tensor([0.7, 0.2, 0.1]))
