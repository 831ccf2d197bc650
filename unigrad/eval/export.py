"""Export the online backbone of a pretraining checkpoint, in two formats.

``NAME.pth`` (:func:`export_backbone`): a plain ``state_dict``. For ResNet-18/34/50/101 at
width 1 without the CIFAR stem it loads, with ``strict=True``, into torchvision's model whose
``fc`` is replaced by ``Identity``::

    m = torchvision.models.resnet18()
    m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load("backbone.pth", weights_only=True), strict=True)

``NAME.safetensors`` + ``NAME.json`` (:func:`export_safetensors`): the same tensors as a
safetensors file, which carries the backbone's description (:data:`DESCRIPTION_FIELDS`) as JSON in
its metadata under the key ``unigrad``; ``NAME.json`` is a copy of that description for people
and tools. :func:`load_exported_backbone` needs only the ``.safetensors`` file and returns a ready
module; a backbone that was your own module (``"architecture": "custom"``) needs that module
passed in (``model=``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from unigrad.data.datasets import MEAN, STD
from unigrad.engine.checkpoint import load_checkpoint
from unigrad.engine.files import atomic_write
from unigrad.errors import UserError
from unigrad.eval.features import _state_diff, backbone_from_checkpoint, checkpoint_config
from unigrad.models.networks import CUSTOM, RESNETS, make_backbone

#: The fix named when an export cannot be written.
WRITE_FIX = "choose another --out"
#: Version of the description's layout (``format_version``).
FORMAT_VERSION = 1
#: The description's keys: ``format`` ("unigrad-backbone"), ``format_version``,
#: ``architecture`` (the backbone name: resnet18/34/50/101, timm:NAME, vit_*, or "custom"),
#: ``width``, ``cifar_stem``, ``norm`` (the ResNets' options, as configured), ``feat_dim`` (D of
#: the [B, D] output), ``image_size`` (training side), ``mean``/``std`` (input normalisation,
#: RGB in [0, 1]), ``method``, ``data``, ``dataset``, ``step`` (of the checkpoint),
#: ``torchvision_model`` (the torchvision model the weights load into strictly, or null),
#: ``unigrad_version``.
DESCRIPTION_FIELDS = (
    "format",
    "format_version",
    "architecture",
    "width",
    "cifar_stem",
    "norm",
    "feat_dim",
    "image_size",
    "mean",
    "std",
    "method",
    "data",
    "dataset",
    "step",
    "torchvision_model",
    "unigrad_version",
)
METADATA_KEY = "unigrad"
BACKBONE_PREFIX = "encoder.backbone."
PROJECTOR_IN = "encoder.projector.0.weight"  # [hidden, D]: the first projector layer


@dataclass
class ExportInfo:
    path: Path
    n_tensors: int
    torchvision_model: str | None  # e.g. "resnet18" when the file loads into it strictly
    config: dict[str, Any]
    description: dict[str, Any] | None = None  # the safetensors export's JSON


def torchvision_match(state: dict[str, torch.Tensor], cfg: dict[str, Any]) -> str | None:
    """The torchvision model (``fc`` = Identity) that ``state`` loads into strictly, or None.

    Checked by building it and comparing keys and shapes, not by reading the config alone.
    """
    name = cfg.get("backbone")
    if name not in RESNETS:
        return None
    ref: nn.Module = getattr(torchvision.models, name)()
    ref.fc = nn.Identity()
    expected = ref.state_dict()
    same = expected.keys() == state.keys() and all(
        expected[k].shape == state[k].shape for k in expected
    )
    return name if same else None


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getbuffer(), WRITE_FIX)


def backbone_weights(
    ckpt_path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """The online backbone's weights of a checkpoint, cloned to contiguous CPU tensors.

    Named backbones are rebuilt from the config and loaded strictly (a mismatch is refused);
    a custom module's weights are the checkpoint's ``encoder.backbone.*`` entries.

    Returns:
        (state_dict, config with defaults filled in, the checkpoint).
    """
    ckpt = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(ckpt, ckpt_path)
    if cfg["backbone"] == CUSTOM:
        n = len(BACKBONE_PREFIX)
        state = {k[n:]: v for k, v in ckpt["model"].items() if k.startswith(BACKBONE_PREFIX)}
    else:
        state = backbone_from_checkpoint(ckpt, ckpt_path)[0].state_dict()
    return {k: v.detach().clone().contiguous() for k, v in state.items()}, cfg, ckpt


def export_backbone(ckpt_path: str | Path, out: str | Path) -> ExportInfo:
    """Write the online backbone's weights of ``ckpt_path`` to ``out`` (``torch.save``,
    atomically); the file holds only the backbone."""
    state, cfg, _ = backbone_weights(ckpt_path)
    out = Path(out)
    save_state_dict(state, out)
    return ExportInfo(out, len(state), torchvision_match(state, cfg), cfg)


def describe(
    state: dict[str, torch.Tensor], cfg: dict[str, Any], ckpt: dict[str, Any]
) -> dict[str, Any]:
    """The JSON description of an exported backbone (:data:`DESCRIPTION_FIELDS`)."""
    from unigrad import __version__

    projector_in = ckpt["model"].get(PROJECTOR_IN)
    return {
        "format": "unigrad-backbone",
        "format_version": FORMAT_VERSION,
        "architecture": cfg["backbone"],
        "width": cfg["width"],
        "cifar_stem": cfg["cifar_stem"],
        "norm": cfg["norm"],
        "feat_dim": None if projector_in is None else int(projector_in.shape[1]),
        "image_size": cfg["image_size"],
        "mean": list(MEAN),
        "std": list(STD),
        "method": cfg["method"],
        "data": cfg["data"],
        "dataset": cfg["dataset"],
        "step": ckpt.get("step"),
        "torchvision_model": torchvision_match(state, cfg),
        "unigrad_version": __version__,
    }


def export_safetensors(ckpt_path: str | Path, out: str | Path) -> ExportInfo:
    """Write the online backbone of ``ckpt_path`` to ``out`` (``.safetensors`` appended when
    missing; its description in the metadata) and the description to ``out`` with suffix ``.json``
    (both atomically). :func:`load_exported_backbone` reads it back."""
    from safetensors.torch import save

    state, cfg, ckpt = backbone_weights(ckpt_path)
    desc = describe(state, cfg, ckpt)
    out = Path(out)
    if out.suffix != ".safetensors":  # "backbone" -> backbone.safetensors + backbone.json
        out = out.with_name(out.name + ".safetensors")
    blob = save(state, metadata={"format": "pt", METADATA_KEY: json.dumps(desc)})
    atomic_write(out, blob, WRITE_FIX)
    text = json.dumps(desc, indent=2) + "\n"
    atomic_write(out.with_suffix(".json"), text.encode(), WRITE_FIX)
    return ExportInfo(out, len(state), desc["torchvision_model"], cfg, desc)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(CPU tensors, description) of a file written by :func:`export_safetensors`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the .safetensors file `unigrad export` wrote")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # header or data unreadable
        raise UserError(f"{path} is not a readable safetensors file ({e})") from None
    if METADATA_KEY not in meta:
        raise UserError(
            f"{path} has no unigrad description in its metadata; pass a file written by "
            "`unigrad export` (or load its tensors with safetensors.torch.load_file)"
        )
    return state, json.loads(meta[METADATA_KEY])


def load_exported_backbone(
    path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The backbone of a ``.safetensors`` export as a ready module (eval mode, on ``device``):
    [B, 3, H, W] -> [B, D], inputs normalised with the description's ``mean``/``std``.

    Args:
        path: the ``.safetensors`` file (or its ``.json`` sidecar; the file beside it is read).
        model: the module to load the weights into (strictly); required when the backbone was
            your own module (``"architecture": "custom"``), else built from the description.
        device: where the module goes.
    """
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    state, desc = read_safetensors(path)
    if model is None:
        if desc["architecture"] == CUSTOM:
            raise UserError(
                f"{path} holds the weights of your own backbone module; pass it: "
                "load_exported_backbone(path, model=YourNet())"
            )
        try:
            model, _ = make_backbone(
                desc["architecture"],
                desc["width"],
                desc["cifar_stem"],
                desc["norm"],
                desc["image_size"] or 224,
            )
        except ValueError as e:
            raise UserError(f"{path}: cannot build its backbone ({e})") from None
    diff = _state_diff(model.state_dict(), state)
    if diff:
        raise UserError(f"{path}: the weights do not fit the module: {diff}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
