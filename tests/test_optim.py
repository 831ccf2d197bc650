"""Schedules and optimiser parameter groups."""

import math

import pytest
import torch
from timm.optim import Lars
from torch import nn

from unigrad.engine.optim import build_optimizer, lr_schedule, set_lr


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
