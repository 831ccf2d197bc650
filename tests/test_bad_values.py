"""Checks that let bad values through (issue 45 item 11): nan/inf settings, a preset's
``method_defaults`` of the wrong type, sync_bn on the CPU, a fixed-size timm ViT with
multi-crop. Each is one line naming the key and the fix."""

import pytest
import torch
import yaml
from conftest import TINY

from unigrad.cli import main
from unigrad.config import build_config
from unigrad.core import dist
from unigrad.errors import UserError
from unigrad.models.networks import build_model


@pytest.mark.parametrize(
    "layer, key",
    [
        ({"base_lr": float("nan")}, "base_lr"),
        ({"base_lr": float("inf")}, "base_lr"),
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"method": "simclr", "tau": float("inf")}, "tau"),
        ({"method": "unigrad", "lambd": float("nan")}, "lambd"),
    ],
)
def test_nan_and_inf_are_refused(layer, key):
    with pytest.raises(UserError, match=f"{key} must be a finite number"):
        build_config(layer)


@pytest.mark.parametrize(
    "values, key",
    [({"rho": "abc"}, "rho"), ({"weight_decay": "abc"}, "weight_decay"), ({"rho": 2.0}, "rho")],
)
def test_a_bad_method_default_in_a_preset_is_an_error_not_a_note(values, key, capsys):
    layer = {"method_defaults": {"unigrad": values}}
    with pytest.raises(UserError, match=rf"method_defaults\.unigrad\.{key}.*fix the preset"):
        build_config(layer, {"method": "unigrad"})
    with pytest.raises(UserError, match=rf"method_defaults\.unigrad\.{key}"):
        build_config(layer, {"method": "byol"})  # a mistake in the preset, whatever the run
    assert "note" not in capsys.readouterr().err


def test_sync_bn_on_the_cpu_under_torchrun_is_refused(monkeypatch):
    from unigrad.engine.parts import sync_batch_norm

    model = build_model("resnet18", 0.125, True, 2, 16)
    assert sync_batch_norm(model, True, torch.device("cpu")) is model  # one process: no-op
    monkeypatch.setattr(dist, "is_dist", lambda: True)
    with pytest.raises(UserError, match=r"sync_bn needs GPUs.*remove sync_bn=true"):
        sync_batch_norm(model, True, torch.device("cpu"))


def test_sync_bn_under_torchrun_on_the_cpu_is_our_line_not_torchs_error(tmp_path, tiny_folder):
    from test_ddp import _run

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**TINY, "amp": "off", "max_steps": 1}))
    args = ["pretrain", "--config", str(tmp_path / "c.yaml"), "--data", str(tiny_folder)]
    args += ["--out", str(tmp_path / "run"), "--quiet", "--device", "cpu", "--set", "sync_bn=true"]
    p = _run(args, nproc=2)
    assert p.returncode != 0
    assert "error: sync_bn needs GPUs" in p.stderr and "ValueError" not in p.stderr


def test_a_fixed_size_vit_with_multi_crop_is_one_line(tmp_path, tiny_folder, capsys):
    pytest.importorskip("timm")
    fixed = "timm:vit_tiny_patch16_224,patch_size=4,dynamic_img_size=false"  # takes 16 px only
    cfg = {**TINY, "backbone": fixed, "amp": "off", "online_probe": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ["pretrain", "--config", str(tmp_path / "c.yaml"), "--data", str(tiny_folder)]
    args += ["--out", str(tmp_path / "run"), "--quiet", "--multi-crop", "2x16,2x8"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "AssertionError" not in err
    assert "takes 16 px inputs only" in err and "views of 8 px" in err and "--multi-crop" in err


def test_a_vit_that_takes_any_size_passes_the_view_size_check():
    pytest.importorskip("timm")
    from unigrad.config import build_config
    from unigrad.engine.parts import check_view_sizes
    from unigrad.models.networks import make_backbone

    cfg = build_config({"backbone": "timm:vit_tiny_patch16_224,patch_size=4", "image_size": 16})
    check_view_sizes(make_backbone(cfg.backbone, image_size=16)[0], cfg, {16, 8})  # no error
