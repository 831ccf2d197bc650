"""SwAV and DINO: each loss against a re-implementation written from its authors' code (loops,
no reuse), Sinkhorn-Knopp's separable form, multi-crop pair weights, and loss form == gradient
form (the model's and the prototypes' gradients)."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from unigrad.core.objective import Objective
from unigrad.experiments.derivations import EXACT_TOL, run_checks
from unigrad.methods import METHODS as METHODS_
from unigrad.methods.dino import teacher_temperature
from unigrad.methods.prototypes import pair_weights
from unigrad.methods.swav import sinkhorn

N, C, K = 10, 8, 12


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny float64 ops: threads only add overhead (and wait, loaded)
    yield
    torch.set_num_threads(old)


#: the schedules off (no frozen prototypes, no warm-up, the queue used once full): the
#: reference implementations below use the final values
OFF = {
    "swav": {"freeze_prototypes": 0, "queue_start": 0, "queue_size": 0},
    "dino": {"freeze_prototypes": 0, "warmup_teacher_temp_epochs": 0},
}


def _obj(method, form=None, variant=None, **kw):
    return Objective(
        method, form, variant, dim=C, **{"n_prototypes": K, **OFF[method], **kw}
    ).double()


def _views(n_views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, C, generator=g, dtype=torch.float64)
    z = [base + 0.6 * torch.randn(N, C, generator=g, dtype=torch.float64) for _ in range(n_views)]
    t = [base + 0.6 * torch.randn(N, C, generator=g, dtype=torch.float64) for _ in range(2)]
    return [x.requires_grad_(True) for x in z], t


def _authors_sinkhorn(out, eps=0.05, iters=3):
    """SwAV's distributed_sinkhorn for one process, written as its authors wrote it."""
    q = torch.exp(out / eps).t()  # [K, B]
    b, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True)
        q = q / k
        q = q / q.sum(dim=0, keepdim=True)
        q = q / b
    return (q * b).t()


def _swav(n_views, **kw):
    return _obj("swav", **kw)


@pytest.mark.parametrize("n_views", [2, 4])
def test_swav_loss_equals_its_authors_loop(n_views):
    """main_swav.py: for each global crop, its code against every other crop, each term the mean
    over samples, averaged over the V - 1 crops, then over the two codes."""
    z, _ = _views(n_views, seed=1)
    obj = _swav(n_views)
    got = obj(z, targets=[x.detach() for x in z[:2]])
    w = obj.parts["prototypes"].weight.detach()  # renormalised by the call
    assert torch.allclose(w.norm(dim=1), torch.ones(K, dtype=w.dtype))
    out = [F.normalize(x, dim=1) @ w.T for x in z]
    loss = 0.0
    for crop_id in (0, 1):
        q = _authors_sinkhorn(out[crop_id].detach())
        subloss = 0.0
        for v in range(n_views):
            if v == crop_id:
                continue
            x = out[v] / 0.1
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (n_views - 1)
    loss /= 2
    assert torch.allclose(got, loss, rtol=1e-10)


def test_sinkhorn_matches_the_authors_and_has_the_separable_form():
    g = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(N, C, generator=g, dtype=torch.float64), dim=1) @ (
        F.normalize(torch.randn(K, C, generator=g, dtype=torch.float64), dim=1).T
    )
    q = sinkhorn(scores, eps=0.05, iters=3)
    assert torch.allclose(q, _authors_sinkhorn(scores), rtol=1e-10)
    assert torch.allclose(q.sum(1), torch.ones(N, dtype=q.dtype))  # each sample a distribution
    # log Q - S/eps = a_i + b_k: double-centred, nothing is left
    m = q.log() - scores / 0.05
    resid = m - m.mean(1, keepdim=True) - m.mean(0, keepdim=True) + m.mean()
    assert resid.abs().max() < 1e-9
    assert (m - m.mean(0, keepdim=True)).std() > 1e-3  # the row term is not trivially 0
    # more iterations balance the prototypes: column sums -> N / K
    q50 = sinkhorn(scores, eps=0.05, iters=50)
    assert (q50.sum(0) - N / K).abs().max() < (q.sum(0) - N / K).abs().max()


def test_sinkhorn_with_a_queue_is_sinkhorn_over_queue_and_batch():
    g = torch.Generator().manual_seed(3)
    batch, queue = torch.randn(N, K, generator=g) * 0.3, torch.randn(7, K, generator=g) * 0.3
    got = sinkhorn(batch, shared=queue)
    ref = _authors_sinkhorn(torch.cat([queue, batch]))[-N:]
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_multi_crop_pair_weights_count_a_local_view_twice():
    assert pair_weights([(0, [1]), (1, [0])]) == {0: 1.0, 1: 1.0}
    w = pair_weights([(0, [1]), (1, [0]), (2, [0, 1]), (3, [0, 1])])
    assert w == pytest.approx({0: 4 / 6, 1: 4 / 6, 2: 8 / 6, 3: 8 / 6})
    assert sum(w.values()) / len(w) == pytest.approx(1.0)  # a mean of the 2 (V - 1) terms


@pytest.mark.parametrize("n_views", [2, 3])
def test_dino_loss_and_centre_equal_its_authors_loss(n_views):
    """DINOLoss.forward: teacher softmax((t - c) / tau_t) per global view, every student view
    v != iq, the mean of the terms; then c <- 0.9 c + 0.1 mean(t)."""
    z, t = _views(n_views, seed=2)
    obj = _obj("dino")
    center0 = torch.randn(K, dtype=torch.float64) * 0.1
    obj.parts["center"].center.copy_(center0)
    protos = obj.parts["prototypes"]
    got = obj(z, targets=t)
    w_s = F.normalize(protos.weight.detach(), dim=1)
    w_t = F.normalize(protos.teacher, dim=1)
    student = torch.cat([F.normalize(x, dim=1) @ w_s.T for x in z]) / 0.1
    teacher = torch.cat([F.normalize(x, dim=1) @ w_t.T for x in t])
    teacher_out = F.softmax((teacher - center0) / 0.07, dim=-1).chunk(2)
    student_out = student.chunk(n_views)
    total, n_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n_terms += 1
    assert torch.allclose(got, total / n_terms, rtol=1e-10)
    batch_center = teacher.sum(0, keepdim=True) / len(teacher)
    expected = center0 * 0.9 + batch_center[0] * 0.1
    assert torch.allclose(obj.parts["center"].center, expected, rtol=1e-12)


def test_dino_teacher_temperature_schedule_is_its_authors():
    warm = [0.04 + (0.07 - 0.04) * e / 29 for e in range(30)]
    sched = warm + [0.07] * 70  # np.concatenate((linspace(.04, .07, 30), ones(70) * .07))
    for e in (0, 1, 15, 29, 30, 99):
        assert teacher_temperature(e, 0.04, 0.07, 30) == pytest.approx(sched[e])
        got = teacher_temperature(torch.tensor(e), 0.04, 0.07, 30)
        assert float(got) == pytest.approx(sched[e])
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07


def _grads(obj, z, t):
    zz = [x.detach().clone().requires_grad_(True) for x in z]
    obj(zz, targets=t).backward()
    return torch.cat([x.grad for x in zz]), obj.parts["prototypes"].weight.grad


@pytest.mark.parametrize("method", ["swav", "dino"])
@pytest.mark.parametrize("n_views", [2, 4])
def test_loss_form_and_exact_gradient_form_give_the_same_gradients(method, n_views):
    """The model's gradient (through u) and the prototypes' gradient (the added surrogate)."""
    z, t = _views(n_views, seed=4)
    torch.manual_seed(0)
    lo = _obj(method, "loss")
    gr = _obj(method, "grad", "exact")
    start = {k: v.clone() for k, v in lo.state_dict().items()}  # the centre changes with a call
    gr.load_state_dict(start)
    (a, pa), (b, pb) = _grads(lo, z, t), _grads(gr, z, t)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (a - b).abs().max()
    assert torch.allclose(pa, pb, rtol=1e-9, atol=1e-12), (pa - pb).abs().max()
    s = _obj(method, "grad", "simple")
    s.load_state_dict(start)
    c, pc = _grads(s, z, t)
    assert torch.allclose(pa, pc, rtol=1e-9, atol=1e-12)  # same prototype gradient
    assert not torch.allclose(a, c, rtol=1e-3)  # a different model gradient


@pytest.mark.parametrize("method", ["swav", "dino"])
@pytest.mark.parametrize("tensor_clock", [False, True])
def test_frozen_prototypes_get_no_gradient_and_the_same_loss(method, tensor_clock):
    """Frozen for the first epoch (a 0-d tensor step, as under compile: step, gates the same)."""
    from unigrad.core.clock import Clock

    z, t = _views(seed=5)
    obj = _obj(method, "loss", freeze_prototypes=1)
    ref = _obj(method, "loss")
    ref.load_state_dict(obj.state_dict())
    clock = Clock(torch.tensor(3) if tensor_clock else 3, steps_per_epoch=4, total_steps=40)
    loss = obj(z, targets=t, step=clock)
    assert torch.allclose(loss, ref(z, targets=t, step=clock))
    loss.backward()
    assert obj.parts["prototypes"].weight.grad.abs().max() == 0
    assert z[0].grad.abs().max() > 0


def test_swav_queue_fills_then_joins_sinkhorn_and_is_state():
    z, t = _views(seed=6)
    obj = _obj("swav", "loss", queue_size=2 * N)
    no_queue = _obj("swav", "loss")
    no_queue.load_state_dict(obj.state_dict(), strict=False)
    for seed in (8, 9):  # fills it (2 other batches of N)
        zf, tf = _views(seed=seed)
        assert torch.allclose(obj(zf, targets=tf), no_queue(zf, targets=tf))  # not used yet
    assert obj.parts["queue"].full
    state = {k: v.clone() for k, v in obj.state_dict().items()}
    b = obj(z, targets=t)
    assert not torch.allclose(b, no_queue(z, targets=t))
    resumed = _obj("swav", "loss", queue_size=2 * N)
    resumed.load_state_dict(state)
    assert resumed.parts["queue"].full
    assert torch.allclose(resumed(z, targets=t), b, rtol=1e-12)
    from unigrad.core.clock import Clock

    for start, expected in ((100, no_queue(z, targets=t)), (1, b)):  # before / after the start
        for s in (5, torch.tensor(5)):  # an int step (eager) or a 0-d tensor (compile: step)
            resumed.load_state_dict(state)
            resumed.hp["queue_start"] = start
            got = resumed(z, targets=t, step=Clock(s, steps_per_epoch=4, total_steps=40))
            assert torch.allclose(got, expected, rtol=1e-12), (start, s)


def test_cutmix_is_refused_by_name():
    from unigrad.core.objective import Mix
    from unigrad.core.spec import HyperparameterError

    z, t = _views(seed=7)
    obj = _swav(2)
    mix = Mix(torch.arange(N), torch.full((N,), 0.5, dtype=torch.float64))
    with pytest.raises(HyperparameterError, match="cutmix does not apply to swav"):
        obj(z, targets=t, mix=mix)


def test_check_gradients_rows_of_swav_and_dino_are_exact():
    rows = [c for c in run_checks(seed=1) if c.method in ("swav", "dino")]
    exact = [c for c in rows if c.kind == "exact"]
    assert {c.method for c in exact} == {"swav", "dino"} and len(exact) == 5
    assert all(c.rel_error < EXACT_TOL for c in exact), exact
    simple = [c for c in rows if c.kind == "simplification"]
    assert len(simple) == 2 and all(c.rel_error > 1e-3 for c in simple)
    assert not math.isnan(sum(c.cosine for c in rows))


@pytest.mark.parametrize("method", ["swav", "dino"])
def test_trains_with_the_trainer_and_checkpoints_its_parts(method, tmp_path, tiny_folder):
    from conftest import TINY

    from unigrad.config import build_config
    from unigrad.engine.checkpoint import load_checkpoint
    from unigrad.engine.trainer import Trainer

    extra = {"queue_size": 32, "queue_start": 0} if method == "swav" else {}
    cfg = build_config(
        TINY,
        {
            "method": method,
            "data": str(tiny_folder),
            "out": str(tmp_path / "r"),
            "max_steps": 3,
            "diag_every": 0,
            "n_prototypes": 16,
            "freeze_prototypes": 0,
            **extra,
        },
    )
    tr = Trainer(cfg, show_progress=False)
    weight = tr.objective.parts["prototypes"].weight
    before = weight.detach().clone()
    assert any(weight is q for g in tr.optimizer.param_groups for q in g["params"])
    tr.fit()
    assert not torch.allclose(weight.detach(), before)
    state = load_checkpoint(tmp_path / "r" / "last.ckpt")["objective"]
    assert torch.equal(state["parts.prototypes.weight"], weight.detach())
    if method == "swav":
        assert int(state["parts.queue.filled"]) == 32  # 3 steps of 16, capped
    else:
        assert state["parts.center.center"].abs().sum() > 0
        assert not torch.equal(state["parts.prototypes.teacher"], before)


@pytest.mark.parametrize("m", [0.0, 0.5])
def test_dino_teacher_copy_takes_the_targets_ema_step(m, tmp_path, tiny_folder):
    """The teacher's last layer follows the student with the run's momentum schedule, right
    after the target's EMA: with momentum_base = momentum_final = m it is the EMA of the
    student's rows, recomputed here from each optimiser step (m = 0: the student itself)."""
    from conftest import TINY

    from unigrad.config import build_config
    from unigrad.engine.trainer import Trainer

    cfg = build_config(
        TINY,
        {"method": "dino", "data": str(tiny_folder), "out": str(tmp_path / "r"), "max_steps": 3,
         "diag_every": 0, "n_prototypes": 16, "freeze_prototypes": 0, "momentum_base": m,
         "momentum_final": m},
    )  # fmt: skip
    tr = Trainer(cfg, show_progress=False)
    protos = tr.objective.parts["prototypes"]
    expect = [protos.teacher.clone()]

    def record(clock):  # after the optimiser step, before the EMA
        expect.append(expect[-1] + (1 - m) * (protos.weight.detach() - expect[-1]))

    tr.parts.hooks.optimizer_step.append(record)
    tr.fit()
    assert len(expect) == 4
    torch.testing.assert_close(protos.teacher, expect[-1], rtol=1e-6, atol=1e-7)
    if m == 0.0:
        assert torch.equal(protos.teacher, protos.weight.detach())


def test_dino_warns_when_ones_own_loop_never_moves_the_teacher():
    z, t = _views(seed=3)
    obj = _obj("dino")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            obj(z, targets=t)
            obj.follow_target_(0.01)
    with pytest.warns(UserWarning, match="follow_target_"):
        for _ in range(3):
            obj(z, targets=t)


PROTO_RUNS = {
    "swav": {"method": "swav", "n_prototypes": 16, "queue_size": 24, "queue_start": 0,
             "freeze_prototypes": 0},
    "dino": {"method": "dino", "form": "grad", "n_prototypes": 16, "freeze_prototypes": 0},
}  # fmt: skip


@pytest.mark.parametrize("name", list(PROTO_RUNS))
def test_compiled_step_equals_eager(name, tiny_folder, tmp_path, monkeypatch):
    """``compile: step`` (aot_eager capture) against the eager step after 1 and 4 steps:
    prototypes, queue, centre and the teacher's last layer included (the queue is used from
    step 3 on: 2 steps of 16 fill its 24 rows)."""
    from test_compiled_step import max_diff, run

    monkeypatch.setenv("UNIGRAD_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    _, eager = run(tiny_folder, tmp_path / "eager", PROTO_RUNS[name], "off", steps=4)
    tr, comp = run(tiny_folder, tmp_path / "step", PROTO_RUNS[name], "step", steps=4)
    assert tr.step_mode == "step"
    for step, tol in ((1, 1e-5), (4, 1e-4)):
        diff, key = max_diff(eager[step], comp[step])
        assert diff < tol, f"{name}: after step {step}, {key} differs by {diff:.2e}"


@pytest.mark.parametrize("name", list(PROTO_RUNS))
def test_resume_is_exact_with_queue_centre_and_prototypes(name, tiny_folder, tmp_path):
    """5 steps in one go equal a run stopped after step 2 and resumed by a new Trainer: the
    queue (full from step 2), the centre, the prototypes and the teacher's copy travel."""
    from conftest import TINY
    from test_compiled_step import train_to_state

    from unigrad.config import build_config

    def train(out, resume=False, stop=None):
        cfg = build_config(
            TINY,
            {"data": str(tiny_folder), "out": str(out), "epochs": 10, "deterministic": True,
             "amp": "off", "diag_every": 0, "knn_every": 0, "max_steps": 5},
            PROTO_RUNS[name],
        )  # fmt: skip
        return train_to_state(cfg, resume, stop)

    straight = train(tmp_path / "a")
    assert train(tmp_path / "b", stop=2)["step"] == 2  # the stop lands at its step
    resumed = train(tmp_path / "b", resume=True)
    assert resumed["step"] == straight["step"] == 5
    keys = set(straight["objective"])
    assert "parts.prototypes.weight" in keys
    assert {"parts.queue.queue"} <= keys if name == "swav" else "parts.center.center" in keys
    for part in ("model", "target", "objective"):
        for k, v in straight[part].items():
            assert torch.equal(v, resumed[part][k]), f"{part}.{k} differs after the resume"


DIST_CASES = [("swav", "loss"), ("swav", "exact"), ("dino", "loss"), ("dino", "simple")]


def _dist_case(method, variant):
    """One step on this rank's rows of 4 views (2 global + 2 local): the input gradients
    (over the world size: the loss is a mean over the local rows), the prototypes' gradient
    averaged over ranks (as DDP averages the model's), the objective's state, all gathered."""
    from unigrad.core import dist as udist

    z, t = _views(4, seed=11)
    w, r = udist.world_size(), udist.rank()
    rows = slice(r * N // w, (r + 1) * N // w)
    torch.manual_seed(0)
    form = "loss" if variant == "loss" else "grad"
    kw = {"queue_size": 2 * N} if method == "swav" else {}
    obj = _obj(method, form, None if form == "loss" else variant, **kw)
    if method == "swav":  # a full queue, the same on every rank
        obj.parts["queue"].push([F.normalize(x.detach(), dim=1).repeat(2, 1) for x in t])
    zz = [x[rows].detach().clone().requires_grad_(True) for x in z]
    obj(zz, targets=[x[rows] for x in t]).backward()
    grads = torch.cat([udist.gather_no_grad(x.grad) for x in zz]) / w
    proto = udist.all_reduce(obj.parts["prototypes"].weight.grad) / w
    return grads, proto, {k: v.clone() for k, v in obj.state_dict().items()}


def test_two_gloo_ranks_equal_one_process_on_the_global_batch(two_ranks):
    """Sinkhorn's sums (with the queue counted once), DINO's centre, the codes (through the
    gradients), the model's and the prototypes' gradients: 2 ranks == 1 process."""
    two = two_ranks[0]["cases"]
    for case in DIST_CASES:
        g1, p1, s1 = _dist_case(*case)
        g2, p2, s2 = two[case]
        assert torch.allclose(g1, g2, rtol=1e-9, atol=1e-12), case
        assert torch.allclose(p1, p2, rtol=1e-9, atol=1e-12), case
        for k in s1:
            assert torch.allclose(s1[k].double(), s2[k].double(), rtol=1e-9, atol=1e-12), (case, k)
        assert not torch.allclose(p1, p2 * 2, rtol=1e-3)  # a sum instead of a mean would show


def test_schedules_by_epoch_reach_the_terms():
    """Through the declaration's schedules and the objective's clock: DINO's teacher
    temperature warms up by epoch and its last layer is frozen for the first epoch; SwAV's
    queue joins from queue_start (a 0-d tensor clock, as under compile: step, gives the same)."""
    from unigrad.core.clock import Clock

    z, t = _views(seed=12)
    obj = _obj("dino", warmup_teacher_temp_epochs=3, freeze_prototypes=1)
    temps = []
    for step in (0, 4, 8, 12):  # epochs 0, 1, 2, 3 of 4 steps
        obj.zero_grad()
        clock = Clock(step, steps_per_epoch=4, total_steps=40)
        zz = [x.detach().clone().requires_grad_(True) for x in z]
        obj(zz, targets=t, step=clock).backward()
        obj.follow_target_(0.01)
        temps.append(float(obj.stats["teacher_temp"]))
        frozen = obj.parts["prototypes"].weight.grad.abs().max() == 0
        assert bool(frozen) == (step < 4), step
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])
    hp = obj.spec.needs.scheduled(obj.hp, Clock(torch.tensor(2), 4, 40))
    assert float(hp["teacher_temp"]) == pytest.approx(0.04 + 0.03 * 0.5 / 2)
    swav = _obj("swav", queue_start=2)
    for step, on in ((0, False), (7, False), (8, True)):
        for s in (step, torch.tensor(step)):
            assert bool(swav.spec.needs.scheduled(swav.hp, Clock(s, 4, 40))["queue_on"]) == on


def _engine_train(method, views):
    """3 steps of the engine's step (SGD, the declared and the run's actions): the objective's
    state (prototypes, queue / centre / teacher copy) and the model after."""
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from unigrad.core.needs import HookContext
    from unigrad.core.targets import TargetBranch
    from unigrad.engine.optim import build_optimizer
    from unigrad.engine.parts import RunParts, step_hooks
    from unigrad.engine.step import train_step
    from unigrad.models.networks import Encoder, SiameseModel

    d = views[0].shape[1]
    torch.manual_seed(1)  # the prototypes' start, as test_..._to_one_process rebuilds it
    obj = _obj(method, **({"queue_size": 8} if method == "swav" else {}))
    torch.manual_seed(0)
    model = SiameseModel(Encoder(nn.Sequential(nn.Linear(d, 16), nn.ReLU()), nn.Linear(16, C)))
    model.double()
    target = TargetBranch(obj.spec.target, model.encoder)
    net = DDP(model) if torch.distributed.is_initialized() else model
    opt = build_optimizer(model, "sgd", 0.1, 0.0, objective=obj)
    parts = RunParts(model, net, target, obj, opt, torch.amp.GradScaler("cpu", enabled=False),
                     [0.1] * 3, [0.9] * 3, 0.1, None)  # fmt: skip
    parts.hooks = step_hooks(obj.spec.needs, HookContext(model, target, obj, obj.hp))
    for k in range(3):
        train_step(parts, views, torch.Generator(), k, n_target=2)
    state = {k: v.detach().clone() for k, v in obj.state_dict().items()}
    return state, torch.cat([p.detach().flatten() for p in model.parameters()])


def _engine_views():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)  # 8 images: 4 per rank
    return [x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(2)]


def _on_rank(rank, world):
    """Both 2-rank checks in one spawn (starting the processes is most of their cost)."""
    local = [v.chunk(world)[rank] for v in _engine_views()]
    return {
        "cases": {case: _dist_case(*case) for case in DIST_CASES},
        "engine": {m: _engine_train(m, local) for m in ("swav", "dino")},
    }


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    from ranks import on_ranks

    return on_ranks(_on_rank, tmp_path_factory.mktemp("gloo"))


def test_trained_prototypes_stay_equal_on_two_ranks_and_to_one_process(two_ranks):
    """The engine's step on 2 gloo ranks: the prototypes (their gradients averaged by the run's
    action after backward), queue, centre and teacher copy are the same on both ranks and equal
    to one process on the global batch after 3 SGD steps; so is the model."""
    r0, r1 = (r["engine"] for r in two_ranks)
    for m in ("swav", "dino"):
        one, model = _engine_train(m, _engine_views())
        torch.manual_seed(1)
        start = _obj(m).parts["prototypes"].weight  # seeded as _engine_train seeds it
        moved = F.normalize(one["parts.prototypes.weight"], dim=1) - F.normalize(start, dim=1)
        assert moved.abs().max() > 1e-4  # they trained
        for k in one:
            assert torch.equal(r0[m][0][k], r1[m][0][k]), (m, k)
            assert torch.allclose(one[k], r0[m][0][k], rtol=1e-9, atol=1e-12), (m, k)
        assert torch.allclose(model, r0[m][1], rtol=1e-9, atol=1e-12), m


def _train_side_by_side(method, form, variant, n_views):
    """10 float64 steps of a tiny MLP Siamese network and the objective (SGD with momentum on
    both), with every schedule on: 2-step epochs, prototypes frozen for the first epoch, SwAV's
    queue (2 batches) from epoch 1, DINO's temperature warming up over 2 epochs. Returns every
    model, target and objective tensor."""
    from golden import D_IN, _model

    from unigrad.core.clock import Clock
    from unigrad.core.targets import TargetBranch

    torch.manual_seed(0)
    model = _model(False).double()
    target = TargetBranch(METHODS_[method].target, model.encoder).double()
    kw = {"queue_size": 2 * N, "queue_start": 1} if method == "swav" else {}
    if method == "dino":
        kw["warmup_teacher_temp_epochs"] = 2
    obj = _obj(method, form, variant, freeze_prototypes=1, **kw)
    opt = torch.optim.SGD([*model.parameters(), *obj.parameters()], lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for step in range(10):
        views = [torch.randn(N, D_IN, generator=gen, dtype=torch.float64) for _ in range(n_views)]
        z, _ = model(views)
        loss = obj(z, targets=target(views[:2], z[:2]), step=Clock(step, 2, 10))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        target.update(model.encoder, 0.9, step + 1)
        obj.follow_target_(1 - 0.9)  # DINO's teacher copy: the same EMA step
        obj.after_step()
    states = (model.state_dict(), target.state_dict(), obj.state_dict())
    return {f"{i}.{k}": v.clone() for i, s in enumerate(states) for k, v in s.items()}


@pytest.mark.parametrize("method", ["swav", "dino"])
@pytest.mark.parametrize("n_views", [2, 4])
def test_loss_form_and_gradient_form_train_alike(method, n_views):
    """Trained side by side on the same views, the loss form and the exact gradient form end
    with the same model, target, prototypes, queue / centre (to round-off); the simplified row
    does not."""
    loss = _train_side_by_side(method, "loss", None, n_views)
    grad = _train_side_by_side(method, "grad", "exact", n_views)
    simple = _train_side_by_side(method, "grad", "simple", n_views)
    for k, v in loss.items():
        if v.is_floating_point():
            assert torch.allclose(v, grad[k], rtol=1e-8, atol=1e-10), k
    w = "2.parts.prototypes.weight"
    assert not torch.allclose(loss[w], simple[w], rtol=1e-4)


@pytest.mark.parametrize("head_norm", ["none", "bn"])
def test_dino_head_normalisation_is_a_setting_the_teacher_copies(head_norm):
    """``head_norm: bn`` is DINO's ``use_bn_in_head``: a BatchNorm after each hidden linear
    layer (before the GELU), none after the bottleneck; the momentum teacher copies it."""
    from torch import nn

    from unigrad.core.targets import TargetBranch
    from unigrad.models.build import model_from_config

    record = {
        "backbone": "resnet18", "width": 0.125, "cifar_stem": True, "proj_depth": 3,
        "proj_dim": 16, "proj_hidden": 32, "image_size": 32, "method": "dino",
        "form": "loss", "hparams": {"head_norm": head_norm},
    }  # fmt: skip
    model = model_from_config(record)
    head = list(model.encoder.projector)
    kinds = [type(m) for m in head]
    bn = nn.BatchNorm1d
    expected = [nn.Linear, bn, nn.GELU] * 2 if head_norm == "bn" else [nn.Linear, nn.GELU] * 2
    assert kinds == [*expected, nn.Linear]
    target = TargetBranch("momentum", model.encoder)
    copied = [type(m) for m in target.net.projector]
    assert copied == kinds


def test_dino_head_normalisation_refuses_other_values():
    from unigrad.core.spec import HyperparameterError

    with pytest.raises(HyperparameterError, match="head_norm must be none or bn, got 'gn'"):
        _obj("dino", head_norm="gn")


@pytest.mark.parametrize("method", ["swav", "dino"])
def test_loss_and_exact_forms_agree_through_the_trainer_in_float64(method, tiny_folder, tmp_path):
    """The protos grid's loss and exact runs through the real Trainer (its parameter groups,
    schedules, hooks and data), converted to float64 (``bench/form_agreement.py --float64``):
    8 steps apart by float64 round-off only (fp32 parts them by 1e-7 to 1e-1 within 50 steps,
    BENCHMARKS §11), with the prototypes frozen for the first step and SwAV's queue (2 batches)
    in Sinkhorn from step 2, DINO's teacher temperature warming up; the simplified row, another
    gradient, ends far from both."""
    from form_agreement import overrides, states
    from step_agreement import grid_run_config, rel

    from unigrad.experiments.grid import load_grid

    over = overrides(str(tiny_folder), 8, tiny=True) | {"freeze_prototypes": 0.3}
    swav = {"queue_size": 32, "queue_start": 0.5}
    over |= swav if method == "swav" else {"warmup_teacher_temp_epochs": 2}
    loss, grad, simple = (
        states(grid_run_config(load_grid("protos"), r, tmp_path / r, over), (8,), True, 0.0)[8]
        for r in (f"{method}-loss-s0", f"{method}-grad-s0", f"{method}-simple-s0")
    )
    assert rel(loss, grad) < 1e-9, rel(loss, grad)
    assert rel(loss, simple) > 1e-4, rel(loss, simple)
