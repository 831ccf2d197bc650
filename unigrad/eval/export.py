"""Export the online backbone of a pretraining checkpoint as a plain ``state_dict``.

For ResNet-18/50 at width 1 without the CIFAR stem the file loads, with ``strict=True``, into
torchvision's model whose ``fc`` is replaced by ``Identity``::

    m = torchvision.models.resnet18()
    m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load("backbone.pth", weights_only=True), strict=True)

Other configurations (width != 1, CIFAR stem, ViT) give the same kind of file for the backbone
that :func:`unigrad.models.networks.build_model` builds from the checkpoint's config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from unigrad.eval.features import load_backbone


@dataclass
class ExportInfo:
    path: Path
    n_tensors: int
    torchvision_model: str | None  # e.g. "resnet18" when the file loads into it strictly
    config: dict[str, Any]


def torchvision_match(state: dict[str, torch.Tensor], cfg: dict[str, Any]) -> str | None:
    """The torchvision model (``fc`` = Identity) that ``state`` loads into strictly, or None.

    Checked by building it and comparing keys and shapes, not by reading the config alone.
    """
    name = cfg.get("backbone")
    if name not in ("resnet18", "resnet50"):
        return None
    ref: nn.Module = getattr(torchvision.models, name)()
    ref.fc = nn.Identity()
    expected = ref.state_dict()
    same = expected.keys() == state.keys() and all(
        expected[k].shape == state[k].shape for k in expected
    )
    return name if same else None


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_backbone(ckpt_path: str | Path, out: str | Path) -> ExportInfo:
    """Write the online backbone's weights of ``ckpt_path`` to ``out`` (atomically).

    Tensors are cloned to contiguous CPU memory, so the file holds only the backbone.
    """
    backbone, cfg = load_backbone(ckpt_path)
    state = {k: v.detach().clone().contiguous() for k, v in backbone.state_dict().items()}
    out = Path(out)
    save_state_dict(state, out)
    return ExportInfo(out, len(state), torchvision_match(state, cfg), cfg)
