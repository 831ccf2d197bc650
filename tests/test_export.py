import torch
import torchvision
from torch import nn

from unigrad.cli import main
from unigrad.engine.checkpoint import save_checkpoint
from unigrad.eval.export import export_backbone
from unigrad.eval.features import load_backbone
from unigrad.models.networks import build_model


def make_checkpoint(path, **arch):
    cfg = {"proj_depth": 1, "proj_dim": 16, "image_size": 32, "method": "byol", **arch}
    keys = ("backbone", "width", "cifar_stem", "proj_depth", "proj_dim")
    model = build_model(**{k: cfg[k] for k in keys}, predictor=True)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong buffer mapping would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_checkpoint({"config": cfg, "model": model.state_dict(), "step": 0, "epoch": 0}, path)
    return path


def test_resnet18_export_loads_strictly_into_torchvision(tmp_path):
    ckpt = make_checkpoint(tmp_path / "r18.ckpt", backbone="resnet18", width=1.0, cifar_stem=False)
    info = export_backbone(ckpt, tmp_path / "out" / "backbone.pth")
    assert info.torchvision_model == "resnet18"
    m = torchvision.models.resnet18()
    m.fc = nn.Identity()
    m.load_state_dict(torch.load(info.path, weights_only=True), strict=True)
    ours, _ = load_backbone(ckpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), ours(x), rtol=0, atol=0)
    assert [p.name for p in info.path.parent.iterdir()] == ["backbone.pth"]  # no temp files


def test_other_configurations_export_the_backbone_only(tmp_path):
    cfg = {"backbone": "resnet18", "width": 0.125, "cifar_stem": True}
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt", **cfg)
    info = export_backbone(ckpt, tmp_path / "tiny.pth")
    assert info.torchvision_model is None
    state = torch.load(info.path, weights_only=True)
    assert not any(k.startswith(("encoder", "projector", "predictor", "fc")) for k in state)
    fresh = build_model(**cfg).encoder.backbone
    fresh.load_state_dict(state, strict=True)


def test_cli_export(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "r18.ckpt", backbone="resnet18", width=1.0, cifar_stem=False)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "b.pth")]) == 0
    assert "strict=True into torchvision.models.resnet18()" in capsys.readouterr().out
    assert torch.load(tmp_path / "b.pth", weights_only=True)["conv1.weight"].shape == (64, 3, 7, 7)
    tiny = make_checkpoint(tmp_path / "t.ckpt", backbone="resnet18", width=0.125, cifar_stem=True)
    assert main(["export", str(tiny)]) == 0
    assert "not torchvision-compatible" in capsys.readouterr().out
    assert (tmp_path / "t.backbone.pth").is_file()
    assert main(["export", str(tmp_path / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
