"""Gradient forms: exact identities of appendix A, and loss form == gradient form end to end."""

import itertools

import pytest
import torch

from unigrad.core import gradients as G
from unigrad.core import losses as L
from unigrad.core.objective import Objective
from unigrad.core.targets import TargetOut
from unigrad.experiments.derivations import EXACT_TOL, run_checks
from unigrad.methods import METHODS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_exact_derivation_holds(seed):
    checks = run_checks(seed=seed)
    exact = [c for c in checks if c.kind == "exact"]
    assert len([c for c in exact if c.method not in ("swav", "dino")]) == 9  # appendix A
    for c in exact:
        assert c.rel_error < EXACT_TOL, c
        assert c.cosine > 1 - 1e-9, c
    for c in checks:
        if c.kind == "simplification":
            assert -1 <= c.cosine <= 1 and c.rel_error > 1e-6, c  # genuinely different


def test_surrogate_gradient_is_g_over_n(float64):
    u = torch.randn(5, 3, requires_grad=True)
    g = torch.randn(5, 3)
    G.surrogate(u, g).backward()
    assert torch.allclose(u.grad, g / 5, atol=0, rtol=1e-15)


def _views(n=12, c=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, c, generator=gen)
    z = [(base + 0.5 * torch.randn(n, c, generator=gen)).requires_grad_(True) for _ in range(2)]
    t = [base + 0.5 * torch.randn(n, c, generator=gen) for _ in range(2)]
    return z, t


def _grad(obj, z, t, pred=None):
    zz = [x.detach().clone().requires_grad_(True) for x in z]
    loss = obj(zz, targets=TargetOut(pos=t, neg=t), pred=pred)
    loss.backward()
    return torch.cat([x.grad for x in zz])


EXACT_PAIRS = [
    # (method, loss kwargs, grad variant, grad kwargs)
    ("moco", {}, "a", {}),
    ("simclr", {}, "b", {}),
    ("directpred", {}, "eq26", {}),
    ("barlow_twins", {}, "f", {}),
    ("vicreg", {}, "i", {}),
    ("unigrad", {}, None, {}),
]


@pytest.mark.parametrize("method,lkw,variant,gkw", EXACT_PAIRS)
def test_loss_form_and_gradient_form_give_the_same_gradient(float64, method, lkw, variant, gkw):
    """With detached (momentum) targets, the gradient form is exactly the loss's gradient."""
    z, t = _views()
    c = z[0].shape[1]
    kw = {"bank_size": 20} if "bank_size" in METHODS[method].params else {}
    lo = Objective(method, "loss", dim=c, **kw, **lkw).double()
    gr = Objective(method, "grad", variant, dim=c, **kw, **gkw).double()
    if method == "moco":  # same, partly filled bank
        keys = torch.nn.functional.normalize(torch.randn(15, c), dim=-1)
        lo.bank.push(keys)
        gr.bank.push(keys)
    a, b = _grad(lo, z, t), _grad(gr, z, t)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (a - b).abs().max()


def test_row_e_is_unigrad_with_online_correlation(float64):
    z, t = _views(seed=3)
    e = Objective("directpred", "grad", "e", dim=8, lambd=3.0).double()
    u = Objective("unigrad", "grad", dim=8, lambd=3.0, corr_source="online").double()
    assert torch.allclose(_grad(e, z, t), _grad(u, z, t))


def _all_configs():
    for name, spec in METHODS.items():
        for form in spec.forms:
            variants = [None] if form == "loss" else list(spec.grads)
            for v in variants:
                yield name, form, v


@pytest.mark.parametrize("method,form,variant", list(_all_configs()))
@pytest.mark.parametrize("target", ["shared", "stopgrad", "momentum"])
def test_every_method_form_variant_runs(method, form, variant, target):
    z, t = _views(n=8, c=8, seed=5)
    kw = {"bank_size": 16} if "bank_size" in METHODS[method].params else {}
    obj = Objective(method, form, variant, dim=8, **kw)
    pred = None
    if METHODS[method].needs.has_predictor:
        pred = [x * 1.1 for x in z]
    if target == "shared":
        tg = TargetOut(pos=z, neg=z)
    elif target == "stopgrad":
        tg = TargetOut(pos=[x.detach() for x in z], neg=[x.detach() for x in z])
    else:
        tg = TargetOut(pos=t, neg=t)
    for _ in range(2):  # second step: filled bank / running F
        loss = obj(z, targets=tg, pred=pred)
        stats = obj.stats
        assert torch.isfinite(loss)
        assert -1.0001 <= float(stats["pos_sim"]) <= 1.0001
    grads = torch.autograd.grad(loss, z, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_symmetric_loss_is_mean_of_both_directions(float64):
    z, t = _views(seed=6)
    sym = Objective("unigrad", "loss", dim=8, lambd=1.0).double()
    asym = Objective("unigrad", "loss", dim=8, lambd=1.0, symmetry="asym").double()
    l_sym = sym(z, TargetOut(pos=t, neg=t))
    l_12 = asym(z, TargetOut(pos=t, neg=t))
    l_21 = Objective("unigrad", "loss", dim=8, lambd=1.0, symmetry="asym").double()(
        [z[1], z[0]], TargetOut(pos=[t[1], t[0]], neg=[t[1], t[0]])
    )
    assert torch.allclose(l_sym, (l_12 + l_21) / 2)


def test_balance_factor_follows_projector_width():
    assert Objective("unigrad", dim=512).lambd == pytest.approx(25.0)
    assert Objective("unigrad", dim=2048).lambd == pytest.approx(100.0)
    assert Objective("vicreg", "grad", "j", dim=1024).lambd == pytest.approx(12.5)
    assert Objective("barlow_twins", "grad", "f", dim=512).lambd == pytest.approx(5e-3)
    assert Objective("unigrad", dim=512, lambd=100.0).lambd == 100.0


def test_barlow_bn_forms_are_averaged_over_channels_by_default(float64):
    """scale_loss defaults to 1/C for BN embeddings (norm sqrt C), 1 for row h (l2)."""
    assert Objective("barlow_twins", "grad", "f", dim=512).hp["scale_loss"] == 1 / 512
    assert Objective("barlow_twins", "loss", dim=512).hp["scale_loss"] == 1 / 512
    assert Objective("barlow_twins", "grad", "h", dim=512).hp["scale_loss"] == 1.0
    z, t = _views(seed=7)
    c = z[0].shape[1]
    for form, variant in (("loss", None), ("grad", "f"), ("grad", "g")):
        one = _grad(Objective("barlow_twins", form, variant, dim=c, scale_loss=1.0).double(), z, t)
        auto = _grad(Objective("barlow_twins", form, variant, dim=c).double(), z, t)
        assert torch.allclose(auto, one / c, rtol=1e-12, atol=0)
    eq8 = Objective("barlow_twins", "loss", dim=c, scale_loss=1.0).double()(
        z, TargetOut(pos=t, neg=t)
    )
    bn = [(x - x.mean(0)) / x.std(0, unbiased=False) for x in (z[0], t[1], z[1], t[0])]
    by_hand = (L.barlow_twins_loss(bn[0], bn[1]) + L.barlow_twins_loss(bn[2], bn[3])) / 2
    assert torch.allclose(eq8, by_hand, rtol=1e-4)  # BN eps 1e-5


@pytest.mark.parametrize(
    "bad", [{"lambd": -1.0}, {"tau": 0.0}, {"corr_source": "x"}, {"scale_loss": 0.0}]
)
def test_invalid_hyperparameters_are_refused(bad):
    method = "moco" if "tau" in bad else "unigrad"
    with pytest.raises(ValueError, match=next(iter(bad))):  # the message names the key
        Objective(method, dim=4, **bad)


def test_cutmix_positive_mixes_unmixed_targets(float64):
    from unigrad.core.objective import Mix

    z, t = _views(seed=7)
    perm = torch.roll(torch.arange(12), 1)
    ratio = torch.full((12,), 0.75)
    obj = Objective("unigrad", "grad", dim=8, lambd=0.0).double()
    zz = [x.detach().clone().requires_grad_(True) for x in z]
    loss = obj(zz, targets=TargetOut(pos=t, neg=t), mix=Mix(perm, ratio))
    loss.backward()
    # lambda = 0: dL/du1 = -pos/N/2 with pos = 0.75 t2 + 0.25 t2[perm] (normalised targets)
    tn = torch.nn.functional.normalize(t[1], dim=-1)
    pos = 0.75 * tn + 0.25 * tn[perm]
    u = torch.nn.functional.normalize(zz[0].detach(), dim=-1)
    jac = (torch.eye(8) - u[:, :, None] * u[:, None, :]) / zz[0].detach().norm(dim=-1)[
        :, None, None
    ]
    expected = -(jac @ pos[:, :, None]).squeeze(-1) / 12 / 2
    assert torch.allclose(zz[0].grad, expected)


def test_multicrop_local_views_take_the_mean_of_global_targets(float64):
    z, t = _views(seed=8)
    local = [z[0].detach().clone().requires_grad_(True)]
    obj = Objective("unigrad", "grad", dim=8, lambd=0.0).double()
    zz = [x.detach().clone().requires_grad_(True) for x in z] + local
    loss = obj(zz, targets=TargetOut(pos=t, neg=t))
    loss.backward()
    tn = [torch.nn.functional.normalize(x, dim=-1) for x in t]
    pos = (tn[0] + tn[1]) / 2
    u = torch.nn.functional.normalize(local[0].detach(), dim=-1)
    jac = (torch.eye(8) - u[:, :, None] * u[:, None, :]) / local[0].detach().norm(dim=-1)[
        :, None, None
    ]
    expected = -(jac @ pos[:, :, None]).squeeze(-1) / 12 / 3
    assert torch.allclose(local[0].grad, expected)


def test_pairing_modes():
    from unigrad.core.objective import pair_views

    assert pair_views(2) == [(0, [1]), (1, [0])]
    assert pair_views(4) == [(0, [1]), (1, [0]), (2, [0, 1]), (3, [0, 1])]
    assert pair_views(2, "asym") == [(0, [1])]
    assert pair_views(4, "asym2x") == [(0, [1]), (2, [3])]
    assert list(itertools.chain(*[p[1] for p in pair_views(3)])) == [1, 0, 0, 1]


def test_moco_enqueues_keys_after_backward():
    z, t = _views(n=6, c=8, seed=9)
    obj = Objective("moco", "loss", dim=8, bank_size=10)
    loss = obj(z, targets=TargetOut(pos=t, neg=t))
    assert int(obj.bank.filled) == 0  # keys wait until backward has used the bank
    loss.backward()
    obj.after_step()
    assert int(obj.bank.filled) == 10  # 2 views x 6 keys: the newest 10 kept
    loss2 = obj(z, targets=TargetOut(pos=t, neg=t))
    loss2.backward()  # the bank used by this loss is not modified before its backward
