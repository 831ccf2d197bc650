"""One process vs two gloo processes: every method's parameter gradient and sample-set state.

The batch is split over 2 ranks (DDP); the result must equal one process on the whole batch.
The model has no BatchNorm, so the only cross-sample coupling is in the objectives.
"""

import pytest
import torch
from ranks import on_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from unigrad.core.objective import Objective
from unigrad.core.targets import TargetBranch
from unigrad.methods import METHODS
from unigrad.models.networks import Encoder, SiameseModel

N, D, C = 8, 6, 8
#: Relative gradient error allowed (float64; reduction order differs between the two runs).
TOL = 1e-5


def configs():
    for name, spec in METHODS.items():
        for form in spec.forms:
            for variant in [None] if form == "loss" else list(spec.grads):
                yield name, form, variant, spec.target
        if spec.target != "momentum":
            yield name, spec.default_form, None, "momentum"
    yield "simclr", "loss", None, "momentum_pos"
    yield "unigrad", "grad", None, "momentum_pos"
    # multi-crop (2 global + 2 local views) for one gradient form of each family
    for name, variant in (
        ("simclr", "b"),
        ("barlow_twins", "f"),
        ("vicreg", "i"),
        ("unigrad", None),
        ("mocov3", "b"),
        ("nnclr", "b"),
        ("swav", "exact"),
        ("dino", "exact"),
    ):
        yield name, "grad", variant, METHODS[name].target, 4


CONFIGS = list(configs())


def build(method):
    torch.manual_seed(0)
    enc = Encoder(nn.Sequential(nn.Linear(D, 16), nn.ReLU()), nn.Linear(16, C))
    pred = (
        nn.Sequential(nn.Linear(C, 4), nn.ReLU(), nn.Linear(4, C))
        if METHODS[method].needs.has_predictor
        else None
    )
    return SiameseModel(enc, pred).double()


def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    return [x + 0.3 * torch.randn(N, D, generator=g, dtype=torch.float64) for _ in range(4)]


def one_step(method, form, variant, target_kind, n_views=2, *, views, wrap=None):
    """Two optimisation-free steps (gradients of step 2, after a state update in step 1)."""
    model = build(method)
    target = TargetBranch(target_kind, model.encoder)
    with torch.no_grad():  # make the target differ from the online network
        for p in target.net.parameters() if target.net is not None else []:
            p.mul_(0.9)
    kw = {"bank_size": 12} if "bank_size" in METHODS[method].params else {}
    obj = Objective(method, form, variant, dim=C, **kw).double()
    net = wrap(model) if wrap else model
    for _ in range(2):
        net.zero_grad()
        z, p = net(views[:n_views])
        loss = obj(z, targets=target(views[:2], z[:2]), pred=p)
        loss.backward()
    grads = torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])
    state = {k: v.clone() for k, v in obj.state_dict().items()}
    return grads, state


def _on_rank(rank, world):
    views = [v.chunk(world)[rank] for v in batch()]
    return {cfg: one_step(*cfg, views=views, wrap=lambda m: DDP(m)) for cfg in CONFIGS}


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    return on_ranks(_on_rank, tmp_path_factory.mktemp("gloo"))[0]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["-".join(str(x) for x in c) for c in CONFIGS])
def test_two_ranks_equal_one_process(two_process_results, cfg):
    g1, s1 = one_step(*cfg, views=batch())
    g2, s2 = two_process_results[cfg]
    rel = float((g1 - g2).norm() / g1.norm())
    assert rel < TOL, f"{cfg}: relative gradient error {rel:.2e}"
    # the tolerance would catch a gradient scaled by 1/world_size (a plain all-reduce or a
    # missing gather in the objective): such a gradient misses it by orders of magnitude
    assert float((g1 - g2 / 2).norm() / g1.norm()) > 100 * TOL
    for k in s1:
        if s1[k].is_floating_point():
            assert torch.allclose(s1[k], s2[k], atol=1e-12), k
        else:
            assert torch.equal(s1[k], s2[k]), k


def test_plain_all_reduce_would_scale_gradients_by_one_over_world_size():
    """The bug class this design avoids: non-autograd all-reduce inside a loss."""
    from unigrad.core import dist as udist

    assert udist.world_size() == 1 and udist.gather_with_grad(torch.ones(2)).shape == (2,)
