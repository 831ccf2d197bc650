"""Schedules, optimisers (SGD, LARS, AdamW) and their parameter groups."""

import itertools
import math

import pytest
import torch
from timm.optim import Lars
from torch import nn

from unigrad.config import build_config, parse_set
from unigrad.core.clock import Clock
from unigrad.engine.optim import (
    build_optimizer,
    clip_grad_norm,
    lr_schedule,
    schedule_tensors,
    set_lr,
    wd_schedule,
)
from unigrad.engine.optim_config import OPTIMIZERS
from unigrad.errors import UserError


def test_lr_schedule_warmup_then_cosine():
    lr = lr_schedule(1.0, total_steps=110, warmup_steps=10, min_ratio=1e-3)
    assert math.isclose(lr[0], 0.1) and math.isclose(lr[9], 1.0)
    assert math.isclose(lr[10], 1.0) and math.isclose(lr[-1], 1e-3)
    assert bool((lr[10:][1:] <= lr[10:][:-1]).all())
    assert math.isclose(lr[60], 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * 50 / 99)))


def _model():
    return nn.ModuleDict(
        {"encoder": nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "predictor": nn.Linear(4, 4)}
    )


def test_lars_excludes_bias_and_norm_from_decay_and_adaptation():
    opt = build_optimizer(_model(), "lars", lr=0.3, weight_decay=1e-6, bias_lr_scale=0.05 / 0.3)
    assert isinstance(opt, Lars)
    special = [g for g in opt.param_groups if g["weight_decay"] == 0]
    assert special and all(p.ndim == 1 for g in special for p in g["params"])
    assert all(math.isclose(g["lr_scale"], 0.05 / 0.3) for g in special)


def test_sgd_decays_everything_and_predictor_lr_can_stay_fixed():
    opt = build_optimizer(_model(), "sgd", lr=0.1, weight_decay=1e-4, predictor_fixed_lr=True)
    assert isinstance(opt, torch.optim.SGD) and all(
        g["weight_decay"] == 1e-4 for g in opt.param_groups
    )
    set_lr(opt, 0.01, peak=0.1)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([0.01, 0.1])


def test_predictor_lr_scale_multiplies_only_the_predictor():
    assert len(build_optimizer(_model(), "sgd", lr=0.1, weight_decay=0).param_groups) == 1
    opt = build_optimizer(_model(), "sgd", lr=0.1, weight_decay=0, predictor_lr_scale=10)
    set_lr(opt, 0.01, peak=0.1)
    by_lr = {g["lr"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert by_lr == pytest.approx({0.01: 3 * 4 + 4 + 4 + 4, 0.1: 4 * 4 + 4})
    opt = build_optimizer(
        _model(), "sgd", lr=0.1, weight_decay=0, predictor_fixed_lr=True, predictor_lr_scale=2
    )
    set_lr(opt, 0.01, peak=0.1)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.01, 0.2])


def _decayed(opt) -> dict[int, float]:
    """id(parameter) -> its group's weight decay."""
    return {id(p): float(g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_norms_and_biases_have_no_weight_decay_in_every_optimizer(name):
    model = _model()
    temperature = nn.ParameterList([nn.Parameter(torch.ones(()))])  # a term's learned part
    for rule in (False, None if name != "sgd" else False):  # None: lars and adamw's recipe
        opt = build_optimizer(
            model, name, lr=0.1, weight_decay=0.05, objective=temperature, norm_bias_decay=rule
        )
        wd = _decayed(opt)
        for p in model.parameters():
            assert wd[id(p)] == (0.0 if p.ndim == 1 else 0.05), (name, p.shape)
        assert wd[id(temperature[0])] == 0.0


def test_sgd_keeps_decaying_norms_and_biases_unless_told():
    """SimSiam's and UniGrad's recipe (existing runs unchanged); the rule is one switch."""
    assert set(_decayed(build_optimizer(_model(), "sgd", 0.1, 0.05)).values()) == {0.05}
    opt = build_optimizer(_model(), "lars", 0.1, 0.05, norm_bias_decay=True)
    assert set(_decayed(opt).values()) == {0.05}


def _step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad()
    model(x).square().mean().backward()


def test_adamw_step_equals_torch_adamw_on_the_same_parameters():
    torch.manual_seed(0)
    ours, ref = _model()["encoder"], _model()["encoder"]
    ref.load_state_dict(ours.state_dict())
    opt = build_optimizer(ours, "adamw", lr=0.01, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    weights = [p for p in ref.parameters() if p.ndim > 1]
    rest = [p for p in ref.parameters() if p.ndim <= 1]
    torch_opt = torch.optim.AdamW(
        [{"params": weights}, {"params": rest, "weight_decay": 0.0}], lr=0.01, weight_decay=0.05
    )
    lrs, wds = lr_schedule(0.01, 4, 1).tolist(), wd_schedule(0.05, 0.5, 4)
    for t in range(4):
        x = torch.randn(8, 3)
        _step(ours, x)
        _step(ref, x)
        set_lr(opt, lrs[t], peak=0.01, wd=wds[t])
        for g in torch_opt.param_groups:
            g["lr"] = lrs[t]
        torch_opt.param_groups[0]["weight_decay"] = wds[t]
        opt.step()
        torch_opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0].weight, _model()["encoder"][0].weight)


def test_weight_decay_schedule_is_dinos_cosine():
    wd = wd_schedule(0.04, 0.4, 11)
    dino = [0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * i / 10)) for i in range(11)]
    assert wd == pytest.approx(dino, abs=1e-12)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4)
    assert all(a < b for a, b in itertools.pairwise(wd))
    assert wd_schedule(0.04, None, 11) is None and wd_schedule(0.04, 0.04, 11) is None


def test_scheduled_weight_decay_reaches_only_the_groups_that_decay():
    opt = build_optimizer(_model(), "sgd", lr=0.1, weight_decay=0.05, norm_bias_decay=False)
    set_lr(opt, 0.1, peak=0.1, wd=0.3)
    assert sorted(float(g["weight_decay"]) for g in opt.param_groups) == [0.0, 0.3]
    schedule_tensors(opt, torch.device("cpu"), wd=True)  # compile: step fills tensors
    set_lr(opt, 0.1, peak=0.1, wd=0.2)
    held = [g["weight_decay"] for g in opt.param_groups]
    assert sorted(float(w) for w in held) == [0.0, pytest.approx(0.2)]
    assert any(isinstance(w, torch.Tensor) for w in held)


def test_a_checkpoint_without_wd_scale_decays_where_it_did():
    opt = build_optimizer(_model(), "lars", lr=0.1, weight_decay=0.05)
    for g in opt.param_groups:
        del g["wd_scale"]  # as saved before the schedule existed
    set_lr(opt, 0.1, peak=0.1, wd=0.01)
    set_lr(opt, 0.1, peak=0.1, wd=0.0)  # a schedule may reach 0: the scale stays fixed
    set_lr(opt, 0.1, peak=0.1, wd=0.02)
    assert sorted(float(g["weight_decay"]) for g in opt.param_groups) == [0.0, 0.02]


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("optimizer", "adam", "optimizer must be sgd, lars or adamw"),
        ("weight_decay_end", "-1", "weight_decay_end must be >= 0"),
        ("clip_grad", "-0.5", "clip_grad must be >= 0"),
    ],
)
def test_bad_optimiser_settings_are_refused_in_one_line(key, value, says):
    with pytest.raises(UserError, match=says):
        build_config(parse_set([f"{key}={value}"]))


def test_new_optimiser_keys_are_set_with_set():
    sets = ["optimizer=adamw", "weight_decay_end=0.4", "clip_grad=3", "norm_bias_decay=false"]
    cfg = build_config(parse_set(sets))
    assert (cfg.optimizer, cfg.weight_decay_end, cfg.clip_grad) == ("adamw", 0.4, 3.0)
    assert cfg.norm_bias_decay is False
    assert build_config({}).norm_bias_decay is None  # an existing run's config: its recipe


def _grad_norm(params) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))


def test_clipping_bounds_the_global_gradient_norm_and_keeps_its_direction():
    torch.manual_seed(0)
    model = _model()
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0)
    (100 * model["predictor"](model["encoder"](torch.randn(8, 3))).square().mean()).backward()
    params = list(model.parameters())
    grads, norm = [p.grad.clone() for p in params], _grad_norm(params)
    assert norm > 1
    clip = clip_grad_norm(opt, 0.5)
    clip(Clock(step=torch.zeros((), dtype=torch.int64)))  # as the compiled step calls it
    assert float(_grad_norm(params)) == pytest.approx(0.5, rel=1e-4)
    for p, g in zip(params, grads, strict=True):
        torch.testing.assert_close(p.grad, g * 0.5 / norm)
    kept = [p.grad.clone() for p in params]
    clip_grad_norm(opt, 1.0)(Clock())  # under the bound: nothing changes
    assert all(torch.equal(p.grad, g) for p, g in zip(params, kept, strict=True))


def test_lars_with_a_weight_decay_schedule_is_not_compiled_as_a_step():
    """timm's Lars branches on the weight decay (``if weight_decay != 0``): a scheduled one is a
    tensor under ``compile: step``, a graph break per parameter; the step falls back."""
    from types import SimpleNamespace

    from unigrad.engine.compiled import step_fallback_reason

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for name, wd, says in [("lars", [0.1, 0.2], "drop weight_decay_end"), ("lars", None, None),
                           ("adamw", [0.1, 0.2], None)]:  # fmt: skip
        opt = build_optimizer(_model(), name, 0.1, 0.1)
        parts = SimpleNamespace(optimizer=opt, wd=wd, scaler=scaler)
        reason = step_fallback_reason(parts, torch.device("cpu"))
        assert (reason is None) if says is None else (says in reason), (name, wd, reason)
