"""Networks: backbones (torchvision ResNets, any timm model, or your own module), projector
and predictor MLPs.

The online encoder is backbone + projector (u = f(x)); a learned predictor follows it for
BYOL/SimSiam. ResNet backbones keep torchvision's module names, so at width 1 without the CIFAR
stem the backbone's state_dict is torchvision's minus ``fc`` (see ``unigrad export``).

Backbone names (``Config.backbone``, ``--backbone``): ``resnet18``, ``resnet34``, ``resnet50``,
``resnet101`` (torchvision; ``width``, ``cifar_stem`` and ``norm`` apply), ``timm:NAME`` for any
timm model (created with ``num_classes=0`` so it returns pooled features; ``img_size`` and
``dynamic_img_size=True`` are passed to the models that take them, so a ViT built for the
global views also embeds multi-crop's smaller ones, its position embeddings resampled), and the
older spelling ``vit_*`` for ``timm:vit_*``. ``timm:NAME,key=value,...`` passes keyword
arguments to ``timm.create_model`` (``timm:vit_tiny_patch16_224,patch_size=4`` for 32 px
images). timm is an optional dependency, imported only for those names. ``custom`` is what a
run records for a module passed from Python (``build_model(module, feat_dim=D)``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import torch
import yaml
from torch import nn
from torchvision.models import resnet

from unigrad.core.needs import Head, HeadContext
from unigrad.errors import UserError, optional

#: torchvision ResNets by name: (block, blocks per stage).
RESNETS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (resnet.Bottleneck, [3, 4, 23, 3]),
}
BACKBONES = tuple(RESNETS)
TIMM_PREFIX = "timm:"
VIT_PREFIX = "vit_"  # the older spelling of timm:vit_*
#: The backbone name a run records for a module passed from Python.
CUSTOM = "custom"
TIMM_HINT = "pip install 'unigrad[timm]'"


def import_timm() -> ModuleType:
    """timm, imported on first use; a one-line :class:`UserError` with the install hint if
    it is missing."""
    return optional("timm", "timm", "a timm backbone")


def is_timm(name: str) -> bool:
    """Whether ``name`` names a timm model (``timm:NAME`` or the older ``vit_*``)."""
    return name.startswith((TIMM_PREFIX, VIT_PREFIX))


def timm_name(name: str) -> tuple[str, dict[str, Any]]:
    """``timm:NAME[,key=value,...]`` (or ``vit_*[,...]``) -> (NAME, keyword arguments of
    ``timm.create_model``, values read as YAML scalars: ``patch_size=4`` is an int)."""
    model, *args = name.removeprefix(TIMM_PREFIX).split(",")
    kwargs: dict[str, Any] = {}
    for arg in args:
        key, sep, value = (x.strip() for x in arg.partition("="))
        if not sep or not key or not value:
            raise UserError(
                f"backbone {name!r}: {arg!r} is not key=value (timm:NAME,key=value,... passes "
                "keyword arguments to timm.create_model)"
            )
        kwargs[key] = yaml.safe_load(value)
    return model.strip(), kwargs


def backbone_error(name: str) -> str | None:
    """None when ``name`` is a backbone :func:`make_backbone` builds, else a one-line message
    naming the problem and the valid names (imports timm for timm names)."""
    if name in RESNETS:
        return None
    valid = f"{', '.join(RESNETS)}, or timm:NAME for any timm model ({TIMM_HINT})"
    if not is_timm(name):
        if name == CUSTOM:
            return (
                f"backbone {CUSTOM!r} is a module passed from Python "
                f"(Trainer(cfg, backbone=module, feat_dim=D)); by name choose one of {valid}"
            )
        return f"unknown backbone {name!r}; choose one of {valid}"
    timm = import_timm()
    try:
        model, _ = timm_name(name)
    except UserError as e:
        return str(e)
    if timm.is_model(model):
        return None
    close = difflib.get_close_matches(model, timm.list_models(), n=3)
    hint = f" (did you mean {', '.join(TIMM_PREFIX + c for c in close)}?)" if close else ""
    return (
        f"unknown timm model {model!r} in backbone {name!r}{hint}; timm.list_models() lists "
        f"the names, or choose one of {', '.join(RESNETS)}"
    )


def resnet_backbone(
    name: str = "resnet18", width: float = 1.0, cifar_stem: bool = False, norm: str = "bn"
) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its classifier (``fc`` = Identity).

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        width: channel multiplier for every stage (0.25 -> 16-32-64-128 for ResNet-18).
        cifar_stem: 3x3 stride-1 first convolution and no max-pool, for 32 px images.
        norm: ``bn`` (BatchNorm), ``gn`` (GroupNorm; per-sample, so DDP needs no SyncBN and
            works on CPU) or ``none``.

    Returns:
        (module mapping [B, 3, H, W] -> [B, D], feature dim D).
    """
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(RESNETS)}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    block, layers = RESNETS[name]
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


def timm_backbone(name: str, image_size: int) -> tuple[nn.Module, int]:
    """A timm model without classifier (``num_classes=0``: pooled features).

    Args:
        name: ``timm:NAME`` or a bare timm name (``vit_small_patch16_224``, ``resnet18``),
            optionally followed by ``,key=value`` keyword arguments of ``timm.create_model``
            (:func:`timm_name`).
        image_size: passed as ``img_size``, with ``dynamic_img_size=True`` (any input size:
            multi-crop's smaller views), to the models that take them (ViTs and the like).

    Returns:
        (module mapping [B, 3, H, W] -> [B, D], D = the model's ``num_features``).
    """
    timm = import_timm()
    model, given = timm_name(name)
    sized = {k: v for k, v in (("img_size", image_size), ("dynamic_img_size", True))
             if k not in given}  # fmt: skip
    while True:
        try:
            net = timm.create_model(model, pretrained=False, num_classes=0, **sized, **given)
            break
        except TypeError as e:  # a keyword the model does not take
            ours = next((k for k in sized if f"'{k}'" in str(e)), None)
            if ours is not None:  # convolutional nets: any size works without it
                del sized[ours]
                continue
            theirs = next((k for k in given if f"'{k}'" in str(e)), None)
            if theirs is None:
                raise
            raise UserError(
                f"backbone {name!r}: timm's {model} takes no argument {theirs!r}; remove it"
            ) from None
        except RuntimeError as e:
            if "Unknown model" not in str(e):
                raise
            raise UserError(f"backbone {name!r}: {str(e).splitlines()[0]}") from None
    return net, int(net.num_features)


def make_backbone(
    name: str,
    width: float = 1.0,
    cifar_stem: bool = False,
    norm: str = "bn",
    image_size: int = 224,
) -> tuple[nn.Module, int]:
    """A backbone by name (see the module docstring): (module [B, 3, H, W] -> [B, D], D).

    ``width``, ``cifar_stem`` and ``norm`` apply to the torchvision ResNets, ``image_size`` to
    timm models that take an ``img_size``.
    """
    if is_timm(name):
        return timm_backbone(name, image_size)
    return resnet_backbone(name, width, cifar_stem, norm)


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


class _Heads(nn.Module):
    """A module whose heads (submodules named in ``head_names``) run in order."""

    head_names: tuple[str, ...] = ()

    def add_head(self, name: str, head: nn.Module) -> None:
        """Append ``head`` under ``name`` (it runs after the heads already there)."""
        if name in self.__dict__:  # an unset default slot (``predictor = None``)
            delattr(self, name)
        self.add_module(name, head)
        self.head_names = (*self.head_names, name)

    def run_heads(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.head_names:
            x = getattr(self, name)(x)
        return x


class Encoder(_Heads):
    """f = heads(backbone(x)): [B, 3, H, W] -> [B, C]; the heads (by default the projector
    alone) run in the order they were added, and a momentum or snapshot target copies them all
    with the backbone."""

    def __init__(self, backbone: nn.Module, projector: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        if projector is not None:
            self.add_head("projector", projector)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_heads(self.backbone(x))


class SiameseModel(_Heads):
    """Online encoder and the online-only heads after it (a predictor; none: ``p`` is None);
    the target branch lives outside (targets.py)."""

    def __init__(self, encoder: Encoder, predictor: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        if predictor is not None:
            self.head_names = ("predictor",)

    def forward(
        self, views: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per view: the encoder's output z [N, C] and the online heads' output [N, C] (or
        None)."""
        z = [self.encoder(v) for v in views]
        p = [self.run_heads(x) for x in z] if self.head_names else None
        return z, p


def build_model(
    backbone: str | nn.Module = "resnet18",
    width: float = 1.0,
    cifar_stem: bool = False,
    proj_depth: int = 3,
    proj_dim: int = 2048,
    proj_hidden: int | None = None,
    predictor: bool = False,
    pred_hidden: int | None = None,
    image_size: int = 224,
    norm: str = "bn",
    feat_dim: int | None = None,
    heads: Mapping[str, Head] | None = None,
    hp: Mapping[str, Any] | None = None,
) -> SiameseModel:
    """Backbone + heads: by default the projector (+ predictor MLP with a C/4 bottleneck, as
    SimSiam, when ``predictor``).

    Args:
        backbone: a name (:func:`make_backbone`) or your own module mapping [B, 3, H, W] ->
            [B, feat_dim] (used as is, not copied; ``width``/``cifar_stem`` do not apply).
        feat_dim: the module's output width D; needed with a module that has no integer
            ``num_features`` attribute (timm models have one), ignored with a name.
        norm: normalisation of the named ResNets and of the MLPs.
        heads: a method's declared heads (:attr:`unigrad.core.needs.Needs.heads`), built in
            order with the widths above and ``hp``; replaces ``predictor``.
    """
    from unigrad.models.heads import PREDICTOR, PROJECTOR  # heads import this module

    if isinstance(backbone, nn.Module):
        net, feat = backbone, feat_dim or getattr(backbone, "num_features", None)
        if not isinstance(feat, int) or feat < 1:
            raise UserError(
                f"build_model needs the width of your backbone's features: pass feat_dim=D "
                f"(its output is [B, D]; got feat_dim={feat_dim!r})"
            )
    else:
        net, feat = make_backbone(backbone, width, cifar_stem, norm, image_size)
    if heads is None:
        heads = {"projector": PROJECTOR, **({"predictor": PREDICTOR} if predictor else {})}
    ctx = HeadContext(feat, proj_dim, proj_depth, proj_hidden, pred_hidden, norm, hp or {})
    built = {name: (head.build(ctx), head.copied) for name, head in heads.items()}
    model = SiameseModel(Encoder(net))
    for name, (module, copied) in built.items():
        (model.encoder if copied else model).add_head(name, module)
    return model
