"""Pretraining end to end on a tiny model and a tiny synthetic ImageFolder."""

import csv
import math

import pytest
import torch
import yaml
from conftest import TINY

from unigrad.config import build_config
from unigrad.engine.checkpoint import load_checkpoint
from unigrad.engine.trainer import Trainer
from unigrad.methods import METHODS


def run(tmp_path, folder, **over):
    cfg = build_config(
        TINY, {"data": str(folder), "out": str(tmp_path / "run"), "max_steps": 3}, over
    )
    tr = Trainer(cfg, show_progress=False)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    final = tr.fit()
    return tr, before, final


def metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _configs():
    for name, spec in METHODS.items():
        for form in spec.forms:
            yield {"method": name, "form": form}


@pytest.mark.parametrize("over", list(_configs()), ids=lambda o: f"{o['method']}-{o['form']}")
def test_every_method_and_form_trains(tmp_path, tiny_folder, over):
    tr, before, _ = run(tmp_path, tiny_folder, **over)
    after = tr.model.state_dict()
    changed = [
        k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])
    ]
    assert changed, "no weight changed"
    rows = metrics(tmp_path / "run")
    pos = [float(r["value"]) for r in rows if r["name"] == "pos_sim"]
    assert pos and all(math.isfinite(v) for v in pos)
    losses = [float(r["value"]) for r in rows if r["name"] == "loss"]
    assert (over["form"] == "grad") == (not losses)  # the surrogate's value is not logged
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize(
    "over",
    [
        {"method": "unigrad", "cutmix": True},
        {"method": "unigrad", "multi_crop": "2x16,2x8"},
        {"method": "unigrad", "cutmix": True, "multi_crop": "2x16,2x8", "form": "loss"},
        {"method": "simsiam", "target": "snapshot", "snapshot_every": 2},
        {"method": "simsiam", "symmetry": "asym2x"},
        {"method": "simsiam", "symmetry": "asym"},
        {"method": "simclr", "form": "grad", "target": "momentum_pos"},
        {"method": "unigrad", "pipeline": "standard", "workers": 0},
        {"method": "byol", "optimizer": "lars", "base_lr_bias": 0.01},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_training_options(tmp_path, tiny_folder, over):
    tr, before, _ = run(tmp_path, tiny_folder, **over)
    assert tr.step == 3
    assert any(not torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_run_directory_contract(tmp_path, tiny_folder):
    tr, _, final = run(tmp_path, tiny_folder, max_steps=None)  # 2 epochs of 3 steps
    out = tmp_path / "run"
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "unigrad"
    state = load_checkpoint(out / "last.ckpt")
    assert state["step"] == tr.step == 6 and state["epoch"] == 2
    assert "corr.F" in state["objective"] and bool(state["objective"]["corr.initialized"])
    assert {"model", "target", "optimizer", "scaler", "rng", "config"} <= set(state)
    assert 0 <= final["knn_top1"] <= 100
    names = {r["name"] for r in metrics(out)}
    assert {"pos_sim", "lr", "img_per_s", "knn_top1", "diag/pos_cos", "diag/channel_std"} <= names


@pytest.mark.parametrize(
    ("over", "fixed", "scale"),
    [
        ({"method": "simsiam"}, True, 1.0),  # the method's default: predictor at the peak lr
        ({"method": "simsiam", "predictor_fixed_lr": False}, False, 1.0),
        ({"method": "byol", "predictor_lr_scale": 10.0}, False, 10.0),
    ],
)
def test_predictor_lr_settings_reach_the_optimizer(tmp_path, tiny_folder, over, fixed, scale):
    cfg = build_config(TINY, {"data": str(tiny_folder), "out": str(tmp_path / "run")}, over)
    tr = Trainer(cfg, show_progress=False)
    pred = {id(p) for n, p in tr.model.named_parameters() if n.startswith("predictor.")}
    assert pred
    for g in tr.optimizer.param_groups:
        for p in g["params"]:
            assert g["fixed_lr"] == (id(p) in pred and fixed)
            assert g["lr_scale"] == (scale if id(p) in pred else 1.0)


def test_views_too_small_for_the_imagenet_stem_get_a_note(tiny_folder, tmp_path, capsys):
    """ResNet + ImageNet stem + 16 px views: layer4 sees 1x1 maps (and PyTorch's CPU bf16
    stride-2 convolution there writes non-finite gradients at random): one note; none with the
    CIFAR stem."""
    for stem in (False, True):
        cfg = build_config(TINY, {"data": str(tiny_folder), "out": str(tmp_path / str(stem))},
                           {"cifar_stem": stem})  # fmt: skip
        Trainer(cfg, show_progress=False).close()
        err = capsys.readouterr().err
        assert ("cifar_stem=true" in err) is not stem, err
