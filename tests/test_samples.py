"""Sample sets (memory bank, F), target branches and the momentum schedule."""

import math

import pytest
import torch
from torch import nn

from unigrad.core.samples import CorrelationEMA, MemoryBank, directpred_predictor
from unigrad.core.targets import TargetBranch, cosine_momentum


def test_memory_bank_fills_then_wraps_around():
    bank = MemoryBank(size=5, dim=2)
    assert bank.negatives().shape == (0, 2)
    bank.push(torch.arange(6.0).view(3, 2))  # rows 0, 1, 2
    assert bank.negatives().shape == (3, 2) and int(bank.ptr) == 3
    bank.push(torch.arange(6.0, 12.0).view(3, 2))  # rows 3, 4, then wraps to 0
    assert int(bank.filled) == 5 and int(bank.ptr) == 1
    assert bank.queue[:, 0].tolist() == [10.0, 2.0, 4.0, 6.0, 8.0]


def test_memory_bank_keeps_only_newest_when_push_exceeds_size():
    bank = MemoryBank(size=3, dim=1)
    bank.push(torch.arange(7.0).view(7, 1))
    assert sorted(bank.queue[:, 0].tolist()) == [4.0, 5.0, 6.0]
    assert int(bank.filled) == 3


def test_memory_bank_state_roundtrips_through_state_dict():
    a, b = MemoryBank(4, 2), MemoryBank(4, 2)
    a.push(torch.randn(3, 2))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.negatives(), b.negatives()) and int(b.ptr) == 3


def test_correlation_first_batch_initialises_then_ema():
    corr = CorrelationEMA(dim=2, rho=0.9)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    corr.update([x])
    assert torch.allclose(corr.F, torch.eye(2) / 2)  # not 0.1 * (I/2): first batch sets F
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    corr.update([y, y])
    expected = 0.9 * torch.eye(2) / 2 + 0.1 * torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(corr.F, expected)
    assert bool(corr.initialized) and "F" in corr.state_dict()


@pytest.mark.parametrize("rho", [-0.1, 1.0])
def test_correlation_rejects_rho_outside_unit_interval(rho):
    with pytest.raises(ValueError):
        CorrelationEMA(2, rho)


def test_directpred_predictor_is_sqrt_plus_boost():
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    evals = torch.tensor([4.0, 1.0, 0.25, 0.0], dtype=torch.float64)
    corr = q @ torch.diag(evals) @ q.T
    w, sqrt_f, lam = directpred_predictor(corr, eps=0.1)
    assert math.isclose(float(lam), 4.0, rel_tol=1e-12)
    assert torch.allclose(sqrt_f @ sqrt_f, corr, atol=1e-12)
    assert torch.allclose(w, sqrt_f + 0.4 * torch.eye(4, dtype=torch.float64))


def test_cosine_momentum_endpoints_and_monotone():
    m = cosine_momentum(0.996, 1.0, 101)
    assert math.isclose(float(m[0]), 0.996) and math.isclose(float(m[-1]), 1.0)
    assert math.isclose(float(m[50]), 0.998, rel_tol=1e-12)
    assert bool((m[1:] >= m[:-1]).all())
    assert cosine_momentum(0.99, 1.0, 1).tolist() == [0.99]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_momentum_target_is_ema_of_online():
    online = _net()
    target = TargetBranch("momentum", online)
    before = [p.clone() for p in target.net.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online.train()(torch.randn(8, 3))  # changes BN running stats
    target.update(online, momentum=0.9, step=1)
    for b, t, o in zip(before, target.net.parameters(), online.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)
        assert not t.requires_grad
    assert torch.equal(target.net[1].running_mean, online[1].running_mean)


def test_snapshot_target_refreshes_every_k_steps():
    online = _net()
    target = TargetBranch("snapshot", online, snapshot_every=3)
    w0 = target.net[0].weight.clone()
    with torch.no_grad():
        online[0].weight.add_(1.0)
    target.update(online, momentum=0.0, step=1)
    assert torch.equal(target.net[0].weight, w0)
    target.update(online, momentum=0.0, step=3)
    assert torch.equal(target.net[0].weight, online[0].weight)


def test_target_kinds_route_pos_and_neg():
    online = _net().eval()
    x = [torch.randn(5, 3), torch.randn(5, 3)]
    z = [online(v) for v in x]
    shared = TargetBranch("shared", online)(x, z)
    assert shared.pos[0] is z[0] and shared.pos[0].requires_grad
    sg = TargetBranch("stopgrad", online)(x, z)
    assert not sg.pos[0].requires_grad and torch.equal(sg.pos[0], z[0])
    mp = TargetBranch("momentum_pos", online)
    mp.net.eval()
    out = mp(x, z)
    assert torch.allclose(out.pos[0], z[0]) and not out.neg[0].requires_grad
    with pytest.raises(ValueError):
        TargetBranch("nope", online)


def test_correlation_state_restores_its_initialised_flag():
    a, b = CorrelationEMA(2, rho=0.5), CorrelationEMA(2, rho=0.5)
    a.update([torch.eye(2)])
    b.load_state_dict(a.state_dict())
    b.update([torch.tensor([[1.0, 0.0]])])  # EMA, not re-initialisation
    assert torch.allclose(
        b.F, 0.5 * torch.eye(2) / 2 + 0.5 * torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    )
