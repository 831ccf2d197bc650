"""The methods added after the paper's table (MoCo v3, NNCLR), multi-crop and CutMix for every
gradient form, learnable objective parameters, and a new combination of existing parts."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch import nn

from unigrad.core.objective import Mix, Objective
from unigrad.core.spec import TAU, Form, MethodSpec
from unigrad.core.targets import TargetOut
from unigrad.core.term import Step
from unigrad.methods import METHODS, register
from unigrad.methods.contrastive import InfoNCE
from unigrad.methods.nnclr import nearest

N, C = 12, 8


def _views(n_views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, C, generator=g, dtype=torch.float64)
    z = [(base + 0.5 * torch.randn(N, C, generator=g, dtype=torch.float64)) for _ in range(n_views)]
    p = [x + 0.3 * torch.randn(N, C, generator=g, dtype=torch.float64) for x in z]
    t = [base + 0.5 * torch.randn(N, C, generator=g, dtype=torch.float64) for _ in range(2)]
    return [x.requires_grad_(True) for x in z], [x.requires_grad_(True) for x in p], t


def test_mocov3_loss_equals_its_authors_formula():
    """2 tau CE(q_i k_j^T / tau, arange N), q the predictions, k the other view's momentum keys;
    symmetrised as the mean of the two directions (the authors' code sums them)."""
    z, p, t = _views(seed=1)
    obj = Objective("mocov3", "loss", dim=C).double()
    got = obj(z, targets=t, pred=p)
    tau = 0.2
    q = [F.normalize(x, dim=-1) for x in p]
    k = [F.normalize(x, dim=-1) for x in t]
    labels = torch.arange(N)
    ref = [2 * tau * F.cross_entropy(q[i] @ k[1 - i].T / tau, labels) for i in (0, 1)]
    assert torch.allclose(got, (ref[0] + ref[1]) / 2, rtol=1e-12)


def test_nnclr_loss_equals_a_reimplementation_with_a_filled_support_set():
    z, p, t = _views(seed=2)
    obj = Objective("nnclr", "loss", dim=C, bank_size=20).double()
    support = F.normalize(torch.randn(20, C, dtype=torch.float64), dim=-1)
    obj.bank.push(support)
    got = obj(z, targets=t, pred=p)
    tau = 0.1
    nn_t = [support[(F.normalize(x, dim=-1) @ support.T).argmax(1)] for x in t]
    keys = torch.cat(nn_t)  # [2N, C]: every target replaced by its nearest support row
    ref = []
    for i in (0, 1):
        logits = F.normalize(p[i], dim=-1) @ keys.T / tau
        own = torch.arange(N) + i * N  # the anchor's own image in its own view: not a candidate
        logits[torch.arange(N), own] = float("-inf")
        ref.append(F.cross_entropy(logits, torch.arange(N) + (1 - i) * N))
    assert torch.allclose(got, (ref[0] + ref[1]) / 2, rtol=1e-12)
    assert torch.equal(nearest(keys, torch.zeros(0, C, dtype=torch.float64)), keys)


def _grad(obj, z, t, p, mix=None):
    zz = [x.detach().clone().requires_grad_(True) for x in z]
    pp = [x.detach().clone().requires_grad_(True) for x in p]
    obj(zz, targets=TargetOut(pos=t, neg=t), pred=pp, mix=mix).backward()
    return torch.cat([x.grad for x in (pp if obj.spec.needs.has_predictor else zz)])


@pytest.mark.parametrize("method", ["mocov3", "nnclr"])
@pytest.mark.parametrize("n_views", [2, 4])
def test_new_gradient_forms_are_their_loss_gradient(method, n_views):
    z, p, t = _views(n_views, seed=3)
    lo = Objective(method, "loss", dim=C).double()
    gr = Objective(method, "grad", dim=C).double()
    support = F.normalize(torch.randn(15, C, dtype=torch.float64), dim=-1)
    for o in (lo, gr):
        if o.bank is not None:
            o.bank.push(support)
    a, b = _grad(lo, z, t, p), _grad(gr, z, t, p)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (a - b).abs().max()


def _gradient_forms():
    for name, spec in METHODS.items():
        for key in spec.grads:
            yield name, key


@pytest.mark.parametrize("method,variant", list(_gradient_forms()))
def test_every_gradient_form_takes_multicrop_and_cutmix(method, variant):
    """Local views get a gradient toward the mean global target; CutMix mixes the positives."""
    z, p, t = _views(4, seed=4)
    params = METHODS[method].params
    kw = {"bank_size": 16} if "bank_size" in params else {}
    if "corr_source" in params:
        kw["corr_source"] = "target"  # CutMix: F from the unmixed target embeddings
    obj = Objective(method, "grad", variant, dim=C, target="momentum", **kw).double()
    mix = Mix(torch.roll(torch.arange(N), 1), torch.full((N,), 0.7, dtype=torch.float64))
    if not obj.term.takes_cutmix:  # SwAV, DINO: codes over the batch, multi-crop only
        g = _grad(obj, z, t, p).view(4, N, C)
        assert torch.isfinite(g).all() and all(g[k].abs().sum() > 0 for k in range(4))
        return
    for _ in range(2):  # the second step sees a filled bank / running F
        g = _grad(obj, z, t, p, mix=mix).view(4, N, C)
    assert torch.isfinite(g).all() and all(g[k].abs().sum() > 0 for k in range(4))
    assert not torch.allclose(g[:2], _grad(obj, z, t, p).view(4, N, C)[:2])  # mixing matters


@pytest.mark.parametrize(
    "method,variant", [("unigrad", None), ("moco", "a"), ("directpred", "eq26")]
)
def test_multicrop_loss_form_equals_its_gradient_form(method, variant):
    z, p, t = _views(4, seed=5)
    kw = {"bank_size": 16} if method == "moco" else {}
    lo = Objective(method, "loss", dim=C, **kw).double()
    gr = Objective(method, "grad", variant, dim=C, **kw).double()
    a, b = _grad(lo, z, t, p), _grad(gr, z, t, p)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_batch_wide_loss_forms_refuse_local_views_and_name_the_alternative():
    z, _p, t = _views(4, seed=6)
    with pytest.raises(ValueError, match="--form grad"):
        Objective("simclr", "loss", dim=C).double()(z, targets=t)


def test_drop_in_calls_equal_the_full_call():
    z, _p, t = _views(seed=7)
    obj = Objective("simclr", "loss", dim=C).double()
    assert torch.equal(obj(z[0], z[1]), obj(z, TargetOut(pos=z, neg=z)))
    uni = Objective("unigrad", "loss", dim=C).double()
    a = uni(z[0], z[1], targets=t)
    uni2 = Objective("unigrad", "loss", dim=C).double()
    assert torch.equal(a, uni2(z, TargetOut(pos=t, neg=t)))


def test_contrastive_negative_over_a_memory_bank_is_a_combination_of_parts():
    """SimCLR's row b with the bank set is MoCo's row a: same parts, no code."""
    z, p, t = _views(seed=8)
    keys = F.normalize(torch.randn(15, C, dtype=torch.float64), dim=-1)
    combo = Objective("simclr", "grad", "b", dim=C, sample_set="bank", bank_size=20).double()
    moco = Objective("moco", "grad", "a", dim=C, bank_size=20).double()
    for o in (combo, moco):
        o.bank.push(keys)
    assert torch.allclose(_grad(combo, z, t, p), _grad(moco, z, t, p), rtol=1e-12)


@dataclass(frozen=True)
class LearnedTemperature(InfoNCE):
    """A test method written as a user would: InfoNCE with a learnable log-temperature."""

    def modules(self, dim, hp):
        return {"log_tau": _Scalar(float(torch.log(torch.tensor(hp["tau"]))))}

    def pair(self, step: Step, i, u, pos):
        tau = step.parts["log_tau"].value.exp()
        negs, mask = self.negatives(step, i)
        logits = torch.cat(
            [(u * pos).sum(-1, keepdim=True), (u @ negs.T).masked_fill(mask, -1e9)], 1
        )
        return -torch.log_softmax(logits / tau, dim=1)[:, 0].mean()


class _Scalar(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(v))


#: a test method written as a user would: InfoNCE with a learnable log-temperature
LEARNED_TAU = MethodSpec(
    name="learned_tau",
    family="test",
    description="InfoNCE with a learned temperature",
    target="shared",
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="l2",
        pos_grad="-u2/tau",
        neg_grad="softmax",
        term=LearnedTemperature("loss"),
    ),
    params={"tau": TAU},
)


def test_learnable_objective_parameters_train_and_are_checkpointed(tmp_path, tiny_folder):
    from unigrad.config import build_config
    from unigrad.engine.checkpoint import load_checkpoint
    from unigrad.engine.trainer import Trainer

    register(LEARNED_TAU, replace=True)
    try:
        cfg = build_config(
            TINY,
            {
                "method": "learned_tau",
                "data": str(tiny_folder),
                "out": str(tmp_path / "r"),
                "max_steps": 3,
                "diag_every": 0,
            },
        )
        tr = Trainer(cfg, show_progress=False)
        param = tr.objective.parts["log_tau"].value
        before = float(param.detach())
        assert any(param is q for g in tr.optimizer.param_groups for q in g["params"])
        tr.fit()
        assert float(param.detach()) != before
        state = load_checkpoint(tmp_path / "r" / "last.ckpt")
        assert torch.equal(state["objective"]["parts.log_tau.value"], param.detach())
    finally:
        METHODS.pop("learned_tau")
