"""Backbones, projector/predictor MLPs and normalisation options."""

import pytest
import torch
import torchvision

from unigrad.models.networks import build_model, mlp, resnet_backbone


def test_resnet18_width_and_cifar_stem():
    net, dim = resnet_backbone("resnet18", width=0.25, cifar_stem=True)
    assert (
        dim == 128
        and net.conv1.kernel_size == (3, 3)
        and isinstance(net.maxpool, torch.nn.Identity)
    )
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert resnet_backbone("resnet50", width=0.5)[1] == 1024


def test_full_width_backbone_is_torchvision_without_fc():
    net, _ = resnet_backbone("resnet18")
    tv = torchvision.models.resnet18()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(net.state_dict(), strict=True)


@pytest.mark.parametrize("norm,cls", [("bn", torch.nn.BatchNorm2d), ("gn", torch.nn.GroupNorm)])
def test_norm_option(norm, cls):
    model = build_model("resnet18", 0.125, True, 2, 16, norm=norm)
    assert isinstance(model.encoder.backbone.bn1, cls)
    if norm == "gn":  # per-sample: one image's output does not depend on the others
        model.train()
        x = torch.randn(4, 3, 16, 16)
        assert torch.allclose(model.encoder(x)[:1], model.encoder(x[:1]), atol=1e-5)


def test_mlp_depth_and_bn_placement():
    m = mlp(8, 16, 4, depth=3)
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert [type(x).__name__ for x in mlp(8, 16, 4, depth=1)] == ["Linear"]
    with pytest.raises(ValueError):
        mlp(8, 16, 4, depth=0)


def test_predictor_bottleneck_is_quarter_width():
    model = build_model("resnet18", 0.125, True, 2, 32, predictor=True)
    assert model.predictor[0].out_features == 8


def test_timm_vit_backbone():
    model = build_model("vit_tiny_patch16_224", proj_depth=2, proj_dim=16, image_size=32)
    z, _ = model([torch.randn(2, 3, 32, 32)])
    assert z[0].shape == (2, 16)
