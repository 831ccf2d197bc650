"""Evaluation during and at the end of pretraining: the kNN monitor on the eval split, the
linear probe on the same cached features, and the randomly initialised backbone of the same seed
(the baseline a run has to beat)."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from unigrad.models.networks import CUSTOM, build_model


def random_init_backbone(cfg: Any, device: torch.device) -> nn.Module | None:
    """The backbone as initialised with ``cfg.seed`` (the global RNG is left untouched);
    None, with a note, for a custom module (the config cannot rebuild it)."""
    if cfg.backbone == CUSTOM:
        print("note: knn_baseline skipped: a custom backbone cannot be rebuilt", file=sys.stderr)
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(
            cfg.backbone, cfg.width, cfg.cifar_stem, image_size=cfg.image_size, norm=cfg.norm
        )
    return model.encoder.backbone.to(device)


def scores(data: Any, backbone: nn.Module, cfg: Any, linear: bool, prefix: str = "") -> dict:
    """kNN (and, if ``linear``, linear-probe) top-1/top-5 of ``backbone`` on the eval split,
    keys prefixed with ``prefix``; {} when the data has no eval split or a single class."""
    from unigrad.eval.features import accuracy, knn_eval
    from unigrad.eval.linear import train_linear

    feats = data.features(backbone)
    if feats is None:
        return {}
    fb, lb, fq, lq = feats
    n_classes = int(torch.unique(torch.cat([lb.flatten(), lq.flatten()])).numel())
    if n_classes < 2:
        print(
            f"WARNING: kNN/linear evaluation skipped: the {cfg.train_split} and "
            f"{cfg.eval_split} splits hold {n_classes} class, where accuracy is 100% "
            "by construction; give the data at least 2 class folders to evaluate",
            file=sys.stderr,
        )
        return {}
    res = knn_eval(fb, lb, fq, lq, k=cfg.knn_k, t=cfg.knn_t)
    out = {f"{prefix}knn_top1": res["top1"], f"{prefix}knn_top5": res["top5"]}
    if linear:
        n_cls = int(max(lb.max(), lq.max())) + 1
        head = train_linear(
            fb.cpu(),
            lb.cpu(),
            n_cls,
            epochs=cfg.final_linear_epochs,
            seed=cfg.seed,
            progress=False,
        )
        with torch.no_grad():
            acc = accuracy(head(fq.cpu()), lq.cpu())
        out[f"{prefix}linear_top1"], out[f"{prefix}linear_top5"] = acc["top1"], acc["top5"]
    return out
