"""Bring your own backbone (timm:NAME, ResNet-34/101, an nn.Module, a Dataset or DataLoader) and
the portable safetensors export (issue 22, items 4 and 5). Tiny models, a few steps each."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import TINY
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from unigrad.cli import main
from unigrad.config import build_config
from unigrad.engine.checkpoint import load_checkpoint, save_checkpoint
from unigrad.engine.trainer import Interrupted, Trainer
from unigrad.errors import UserError
from unigrad.eval.export import (
    DESCRIPTION_FIELDS,
    export_safetensors,
    load_exported_backbone,
)
from unigrad.eval.features import load_backbone
from unigrad.models.networks import build_model, make_backbone

ROOT = Path(__file__).resolve().parents[1]
FAST = {"device": "cpu", "amp": "off", "knn_every": 0, "diag_every": 0, "workers": 0}


class TinyNet(nn.Module):
    """A user backbone: [B, 3, H, W] -> [B, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


def images(n=16, size=16, labels=True, kind="uint8"):
    """n random images as a plain list: (img, label) or img; img uint8/float tensors or PIL."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
        img = {
            "uint8": x,
            "float": x.float() / 255,
            "pil": Image.fromarray(x.permute(1, 2, 0).numpy()),
        }[kind]
        out.append((img, i % 2) if labels else img)
    return out


def cfg_for(tmp_path, name="run", **over):
    return build_config(TINY, FAST, {"out": str(tmp_path / name), "batch_size": 8}, over)


def test_timm_resnet18_trains_through_the_trainer(tmp_path, tiny_folder):
    cfg = cfg_for(tmp_path, backbone="timm:resnet18", data=str(tiny_folder), max_steps=2)
    tr = Trainer(cfg, show_progress=False)
    assert type(tr.model.encoder.backbone).__module__.startswith("timm")
    assert tr.model.encoder.projector[0].in_features == 512  # timm's num_features
    final = tr.fit()
    assert tr.step == 2 and "knn_top1" in final


def test_user_module_and_dataset_with_val_data(tmp_path, capsys):
    net = TinyNet()
    cfg = cfg_for(tmp_path, max_steps=2)
    tr = Trainer(
        cfg,
        show_progress=False,
        backbone=net,
        feat_dim=8,
        train_data=images(kind="float"),
        val_data=images(8, kind="pil"),
    )
    assert tr.model.encoder.backbone is net and tr.cfg.backbone == "custom"
    assert cfg.backbone == "resnet18"  # the caller's config is left as it was
    final = tr.fit()
    assert tr.step == 2 and "knn_top1" in final
    assert load_checkpoint(tmp_path / "run" / "last.ckpt")["config"]["backbone"] == "custom"


def _run(tmp_path, name, stop_at=None, resume=False):
    """4 steps (2 epochs of 2) on unlabelled PIL images; stop_at: interrupt after that step."""
    torch.manual_seed(1)  # the module's initialisation is the caller's
    tr = Trainer(
        cfg_for(tmp_path, name, epochs=2, ckpt_every=1),
        resume=resume,
        show_progress=False,
        backbone=TinyNet(),
        feat_dim=8,
        train_data=images(labels=False, kind="pil"),
    )
    if stop_at is not None:
        step = tr.train_step

        def train_step(views, gen):
            out = step(views, gen)
            if tr.step == stop_at:
                tr.loop_state.request_stop(15)
            return out

        tr.train_step = train_step
    return tr


def test_user_module_resumes_exactly(tmp_path, capsys):
    full = _run(tmp_path, "full")
    assert full.fit() == {}  # no labels: no evaluation, said once
    assert "note: no kNN/linear evaluation" in capsys.readouterr().err
    with pytest.raises(Interrupted):
        _run(tmp_path, "cut", stop_at=3).fit()
    tr = _run(tmp_path, "cut", resume=True)  # a fresh module of the same architecture
    assert tr.step == 3
    tr.fit()
    a, b = full.model.state_dict(), tr.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dataloader_of_views_is_taken_as_given(tmp_path):
    g = torch.Generator().manual_seed(0)
    batches = [([torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)], torch.zeros(8))] * 3

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return batches[i]

    loader = DataLoader(Views(), batch_size=None)
    tr = Trainer(
        cfg_for(tmp_path, max_steps=2, image_size=None),
        show_progress=False,
        backbone=TinyNet(),
        train_data=loader,
        feat_dim=8,
    )
    assert tr.cfg.image_size == 16 and tr.steps_per_epoch == 3
    tr.fit()
    assert tr.step == 2
    plain = DataLoader(images(), batch_size=8)  # (images, labels): not views
    with pytest.raises(UserError, match="must yield the 2 augmented views"):
        Trainer(cfg_for(tmp_path, "bad"), backbone=TinyNet(), feat_dim=8, train_data=plain)


def test_build_model_with_a_module_needs_its_width():
    model = build_model(TinyNet(), feat_dim=8, proj_depth=2, proj_dim=16, predictor=True)
    z, p = model([torch.randn(4, 3, 16, 16)])
    assert z[0].shape == p[0].shape == (4, 16)
    with pytest.raises(UserError, match="feat_dim"):
        build_model(TinyNet())


@pytest.mark.parametrize(("name", "dim"), [("resnet34", 64), ("resnet101", 256)])
def test_resnet34_and_101_feature_width(name, dim):
    net, feat = make_backbone(name, width=0.125, cifar_stem=True)
    assert feat == dim
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 3, 16, 16)).shape == (2, dim)


def test_resnet34_full_width_is_torchvision():
    net, feat = make_backbone("resnet34")
    ref = torchvision.models.resnet34()
    ref.fc = nn.Identity()
    assert feat == 512
    ours, theirs = net.state_dict(), ref.state_dict()
    assert ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "unigrad", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        ("resnet35", "resnet18, resnet34, resnet50, resnet101, or timm:NAME"),
        ("timm:resnet35", "unknown timm model 'resnet35'"),
    ],
)
def test_cli_refuses_an_unknown_backbone_in_one_line(tmp_path, backbone, expected):
    r = _cli("pretrain", "--backbone", backbone, "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_missing_timm_gives_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    args = ["pretrain", "--backbone", "timm:resnet18", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'unigrad[timm]'" in err[0]
    with pytest.raises(UserError, match=r"unigrad\[timm\]"):
        build_model("vit_tiny_patch16_224")
    assert build_model("resnet18", 0.125) is not None  # ResNets need no timm


# --- export ---------------------------------------------------------------------------------


def make_checkpoint(path, backbone="resnet18", module=None, **extra):
    """A checkpoint of a BYOL model with non-trivial BN statistics."""
    cfg = {"backbone": backbone, "proj_depth": 2, "proj_dim": 16, "image_size": 32}
    cfg.update({"method": "byol", "width": 0.125, "cifar_stem": True, "dataset": "cifar10"})
    cfg.update(extra)
    if module is not None:
        cfg["backbone"] = "custom"
    model = build_model(
        module if module is not None else backbone,
        cfg["width"],
        cfg["cifar_stem"],
        cfg["proj_depth"],
        cfg["proj_dim"],
        predictor=True,
        image_size=32,
        feat_dim=8 if module is not None else None,
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_checkpoint({"config": cfg, "model": model.state_dict(), "step": 7, "epoch": 0}, path)
    return path


@pytest.mark.parametrize("backbone", ["resnet18", "timm:resnet18"])
def test_safetensors_export_round_trips_bit_exactly(tmp_path, backbone):
    ckpt = make_checkpoint(tmp_path / "a.ckpt", backbone)
    info = export_safetensors(ckpt, tmp_path / "out" / "a.safetensors")
    saved = load_file(info.path)
    model = load_checkpoint(ckpt)["model"]
    expected = {k[17:]: v for k, v in model.items() if k.startswith("encoder.backbone.")}
    assert saved.keys() == expected.keys()
    assert all(saved[k].dtype == v.dtype and torch.equal(saved[k], v) for k, v in expected.items())

    net = load_exported_backbone(info.path)
    assert not net.training
    state = net.state_dict()
    assert (
        all(torch.equal(state[k], v) for k, v in expected.items()) and state.keys() == saved.keys()
    )
    original, _ = load_backbone(ckpt)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), original.eval()(x), rtol=0, atol=0)

    desc = json.loads(info.path.with_suffix(".json").read_text())
    assert tuple(desc) == DESCRIPTION_FIELDS and desc == info.description
    assert desc["architecture"] == backbone and desc["feat_dim"] == original(x).shape[1]
    assert (desc["width"], desc["cifar_stem"], desc["norm"]) == (0.125, True, "bn")
    assert (desc["method"], desc["image_size"], desc["dataset"], desc["step"]) == (
        "byol",
        32,
        "cifar10",
        7,
    )
    assert desc["unigrad_version"] and len(desc["mean"]) == len(desc["std"]) == 3
    names = sorted(p.name for p in info.path.parent.iterdir())
    assert names == ["a.json", "a.safetensors"]  # no temporary files left


def test_custom_backbone_export_needs_the_module(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "c.ckpt", module=TinyNet())
    assert main(["export", str(ckpt), "--out", str(tmp_path / "c.pth")]) == 0
    assert "model=YourNet()" in capsys.readouterr().out
    desc = json.loads((tmp_path / "c.json").read_text())
    assert desc["architecture"] == "custom" and desc["feat_dim"] == 8
    with pytest.raises(UserError, match=r"model=YourNet\(\)"):
        load_exported_backbone(tmp_path / "c.safetensors")
    with pytest.raises(UserError, match="your own backbone module"):
        load_backbone(ckpt)
    net = load_exported_backbone(tmp_path / "c.json", model=TinyNet())
    pth = torch.load(tmp_path / "c.pth", weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in pth.items())
    with pytest.raises(UserError, match="do not fit"):
        load_exported_backbone(tmp_path / "c.safetensors", model=nn.Linear(3, 8))


def test_cli_export_writes_both_formats(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "r.ckpt", width=1.0, cifar_stem=False)
    assert main(["export", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "strict=True into torchvision.models.resnet18()" in out
    for suffix in (".pth", ".safetensors", ".json"):
        assert (tmp_path / f"r.backbone{suffix}").is_file()
    desc = json.loads((tmp_path / "r.backbone.json").read_text())
    assert desc["torchvision_model"] == "resnet18"
