"""Networks: torchvision ResNet backbones (optionally timm ViT), projector and predictor MLPs.

The online encoder is backbone + projector (u = f(x)); a learned predictor follows it for
BYOL/SimSiam. Backbones keep torchvision's module names, so at width 1 without the CIFAR stem the
backbone's state_dict is torchvision's minus ``fc`` (see ``unigrad export``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet

BACKBONES = ("resnet18", "resnet50")
VIT_PREFIX = "vit_"


def resnet_backbone(
    name: str = "resnet18", width: float = 1.0, cifar_stem: bool = False, norm: str = "bn"
) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its classifier (``fc`` = Identity).

    Args:
        name: ``resnet18`` or ``resnet50``.
        width: channel multiplier for every stage (0.25 -> 16-32-64-128 for ResNet-18).
        cifar_stem: 3x3 stride-1 first convolution and no max-pool, for 32 px images.
        norm: ``bn`` (BatchNorm), ``gn`` (GroupNorm; per-sample, so DDP needs no SyncBN and
            works on CPU) or ``none``.

    Returns:
        (module mapping [B, 3, H, W] -> [B, D], feature dim D).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    block, layers = (
        (resnet.BasicBlock, [2, 2, 2, 2])
        if name == "resnet18"
        else (resnet.Bottleneck, [3, 4, 6, 3])
    )
    net = resnet.ResNet(block, layers, norm_layer=norm_layer(norm, 2))
    planes = [max(round(p * width), 1) for p in (64, 128, 256, 512)]
    if width != 1.0:  # rebuild the stages at the new width with torchvision's own builder
        net.inplanes = planes[0]
        net.conv1 = nn.Conv2d(3, planes[0], 7, 2, 3, bias=False)
        net.bn1 = norm_layer(norm, 2)(planes[0])
        net.layer1 = net._make_layer(block, planes[0], layers[0])
        net.layer2 = net._make_layer(block, planes[1], layers[1], stride=2)
        net.layer3 = net._make_layer(block, planes[2], layers[2], stride=2)
        net.layer4 = net._make_layer(block, planes[3], layers[3], stride=2)
        for m in net.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, planes[0], 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, planes[3] * block.expansion


NORMS = ("bn", "gn", "none")


def _groups(c: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0)


def norm_layer(kind: str, dims: int) -> Callable[[int], nn.Module]:
    """Normalisation factory ``f(channels)``: BatchNorm{1,2}d, GroupNorm, or Identity."""
    if kind == "bn":
        return nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    if kind == "gn":  # MLP features [N, C]: one group over the features (a LayerNorm)
        return (lambda c: nn.GroupNorm(_groups(c), c)) if dims == 2 else nn.LayerNorm
    if kind == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def vit_backbone(name: str, image_size: int) -> tuple[nn.Module, int]:
    """A timm ViT (``vit_tiny_patch16_224``, ``vit_small_patch16_224``, ...) without head."""
    import timm

    net = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size)
    return net, int(net.num_features)


def mlp(
    in_dim: int, hidden: int, out_dim: int, depth: int, last_bn: bool = False, norm: str = "bn"
) -> nn.Sequential:
    """Linear layers with BN + ReLU after all but the last (paper: 3 layers of 2048).

    depth 1 is a single linear map. ``last_bn`` adds a BN after the last layer (SimSiam).
    """
    if not 1 <= depth <= 8:
        raise ValueError(f"MLP depth must be in 1..8, got {depth}")
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth - 1):
        layers += [
            nn.Linear(d, hidden, bias=False),
            norm_layer(norm, 1)(hidden),
            nn.ReLU(inplace=True),
        ]
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """f = projector(backbone(x)): [B, 3, H, W] -> [B, C]."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


class SiameseModel(nn.Module):
    """Online encoder and (optional) predictor; the target branch lives outside (targets.py)."""

    def __init__(self, encoder: Encoder, predictor: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(
        self, views: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per view: projector output z [N, C] and predictor output [N, C] (or None)."""
        z = [self.encoder(v) for v in views]
        p = [self.predictor(x) for x in z] if self.predictor is not None else None
        return z, p


def build_model(
    backbone: str = "resnet18",
    width: float = 1.0,
    cifar_stem: bool = False,
    proj_depth: int = 3,
    proj_dim: int = 2048,
    proj_hidden: int | None = None,
    predictor: bool = False,
    pred_hidden: int | None = None,
    image_size: int = 224,
    norm: str = "bn",
) -> SiameseModel:
    """Backbone + projector (+ predictor MLP with a C/4 bottleneck by default, as SimSiam)."""
    if backbone.startswith(VIT_PREFIX):
        net, feat = vit_backbone(backbone, image_size)
    else:
        net, feat = resnet_backbone(backbone, width, cifar_stem, norm)
    projector = mlp(feat, proj_hidden or proj_dim, proj_dim, proj_depth, norm=norm)
    pred = None
    if predictor:
        pred = mlp(proj_dim, pred_hidden or max(proj_dim // 4, 1), proj_dim, 2, norm=norm)
    return SiameseModel(Encoder(net, projector), pred)
