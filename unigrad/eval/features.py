"""Evaluation of a pretrained backbone: loading, features, kNN monitor (SPEC "Evaluation").

Everything takes plain modules, tensors and loaders, so the trainer's kNN monitor calls the same
code as ``unigrad knn``: :func:`extract_features` then :func:`knn_eval`. The classifiers trained
on top (linear probe, semi-supervised fine-tuning) are in :mod:`unigrad.eval.linear`. Accuracies
are percentages; top-5 with fewer than 5 classes is top-(number of classes), i.e. 100.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from unigrad.config import Config, to_dict
from unigrad.engine.checkpoint import load_checkpoint
from unigrad.errors import UserError
from unigrad.models.build import model_from_config
from unigrad.models.networks import CUSTOM


def progress_bar(it: Iterable, desc: str, enabled: bool | None = None, **kw: Any) -> tqdm:
    """A tqdm bar on stderr; ``enabled=None`` shows it only when stderr is a terminal."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(it, desc=desc, disable=not show, file=sys.stderr, leave=False, **kw)


def _describe(cfg: dict[str, Any]) -> str:
    keys = ("backbone", "width", "cifar_stem", "proj_depth", "proj_dim", "proj_hidden")
    return " ".join(f"{k}={cfg[k]}" for k in keys)


def _state_diff(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """Human-readable difference of two state dicts (keys and shapes), at most 3 items each."""

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {list(found[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {few(unexpected)}")
    if shapes:
        parts.append(f"shape (checkpoint vs config) {few(shapes)}")
    return "; ".join(parts)


def load_backbone(
    ckpt_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The online backbone of a pretraining checkpoint, in eval mode, and its config.

    The whole :class:`~unigrad.models.networks.SiameseModel` is rebuilt from ``config`` (with the
    heads its method declares, :func:`~unigrad.models.build.model_from_config`) and loaded
    strictly, so a checkpoint whose weights do not fit its own config is refused.

    Returns:
        (backbone mapping [B, 3, H, W] -> [B, D], config dict with Config defaults filled in).

    Raises:
        UserError: missing/corrupt file, not a pretraining checkpoint, a custom backbone module
            (the config cannot rebuild it), or weights that differ from the architecture (the
            message names the file and the differing keys).
    """
    backbone, cfg = backbone_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
    return backbone.to(device), cfg


def checkpoint_config(ckpt: dict[str, Any], ckpt_path: str | Path) -> dict[str, Any]:
    """The config of a loaded pretraining checkpoint with Config defaults filled in."""
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("model"), dict):
        raise UserError(
            f"{ckpt_path} has no 'config' and 'model' entries (it has: {', '.join(ckpt)}); "
            "pass a checkpoint written by `unigrad pretrain`"
        )
    return {**to_dict(Config()), **ckpt["config"]}


def backbone_from_checkpoint(
    ckpt: dict[str, Any], ckpt_path: str | Path
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_backbone` for a checkpoint already loaded (on the CPU)."""
    cfg = checkpoint_config(ckpt, ckpt_path)
    if cfg["backbone"] == CUSTOM:
        raise UserError(
            f"{ckpt_path} was trained with your own backbone module, which its config cannot "
            "rebuild; export it (`unigrad export`) and load it in Python with "
            "unigrad.load_exported_backbone(path, model=YourNet())"
        )
    state = ckpt["model"]
    try:
        model = model_from_config(cfg)
    except ValueError as e:
        raise UserError(f"{ckpt_path}: cannot build its network ({e})") from None
    except UserError as e:
        raise UserError(f"{ckpt_path}: {e}") from None
    diff = _state_diff(model.state_dict(), state)
    if diff:
        raise UserError(
            f"{ckpt_path}: weights do not match the architecture of its config "
            f"({_describe(cfg)}): {diff}. The file was edited or written by another version"
        )
    model.load_state_dict(state, strict=True)
    return model.encoder.backbone.eval(), cfg


@torch.no_grad()
def extract_features(
    net: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device,
    *,
    max_batches: int | None = None,
    channels_last: bool = True,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of ``net`` in eval mode over a loader (its train/eval mode is restored after).

    bf16 autocast on CUDA; channels_last input (slightly faster on CPU too).

    Returns:
        (features [N, D] float32, labels [N] int64), both on ``device``.
    """
    device = torch.device(device)
    was_training = net.training
    net.eval()
    feats, labels = [], []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    try:
        for i, (x, y) in enumerate(progress_bar(loader, "features", progress, total=total)):
            if max_batches is not None and i >= max_batches:
                break
            x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                feats.append(net(x).float())
            labels.append(y.to(device, non_blocking=True))
    finally:
        net.train(was_training)
    if not feats:
        raise UserError("no images to extract features from: the split is empty")
    return torch.cat(feats), torch.cat(labels).long()


def knn_predict_scores(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    t: float,
    num_classes: int,
) -> torch.Tensor:
    """Weighted kNN class scores (InstDisc / SimSiam monitor).

    score_c(q) = sum over the k nearest bank rows v with label c of exp(cos(q, v) / t). Each row
    is shifted by its largest similarity before exp (a per-query factor: no change to the
    ranking, no overflow for small t).

    Args:
        bank: l2-normalised [N, D]; bank_labels [N]; queries l2-normalised [B, D].

    Returns:
        [B, num_classes] scores.
    """
    sim, idx = (queries @ bank.T).topk(k, dim=1)  # [B, k]
    weights = ((sim - sim[:, :1]) / t).exp()
    scores = torch.zeros(queries.shape[0], num_classes, device=queries.device)
    return scores.scatter_add_(1, bank_labels[idx], weights)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """How many rows of scores [B, K] have ``labels`` [B] among their top-min(k, K) entries."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return int((top == labels[:, None]).any(dim=1).sum())


def knn_eval(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    eval_feats: torch.Tensor,
    eval_labels: torch.Tensor,
    k: int = 200,
    t: float = 0.1,
    *,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """kNN accuracy of ``eval_feats`` [M, D] against the bank ``train_feats`` [N, D].

    Features are l2-normalised here; votes are exp(cos / t) summed per class. k is clamped to
    N (the returned ``k`` is the one used). The similarity matrix is computed in chunks of
    queries (about 2^26 entries each) on the bank's device, so memory stays bounded.

    Returns:
        {"top1", "top5" (percent), "k", "n_train", "n_eval"}.
    """
    if k < 1 or t <= 0:
        raise UserError(f"kNN needs k >= 1 and temperature > 0, got k={k}, t={t}")
    n, m = train_feats.shape[0], eval_feats.shape[0]
    if n == 0 or m == 0:
        raise UserError(f"kNN needs non-empty train and eval sets (got {n} and {m} images)")
    k = min(k, n)
    classes = num_classes or int(max(train_labels.max(), eval_labels.max())) + 1
    bank = F.normalize(train_feats.float(), dim=1)
    bank_labels = train_labels.to(bank.device)
    chunk = chunk_size or max(1, 2**26 // n)
    top1 = top5 = 0
    for s in range(0, m, chunk):
        q = F.normalize(eval_feats[s : s + chunk].to(bank.device).float(), dim=1)
        y = eval_labels[s : s + chunk].to(bank.device)
        scores = knn_predict_scores(bank, bank_labels, q, k, t, classes)
        top1 += topk_correct(scores, y, 1)
        top5 += topk_correct(scores, y, 5)
    return {"top1": 100.0 * top1 / m, "top5": 100.0 * top5 / m, "k": k, "n_train": n, "n_eval": m}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy in percent of logits [N, K] against labels [N]."""
    n = labels.shape[0]
    return {
        "top1": 100.0 * topk_correct(logits, labels, 1) / n,
        "top5": 100.0 * topk_correct(logits, labels, 5) / n,
    }
