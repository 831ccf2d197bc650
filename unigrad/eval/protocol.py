"""The evaluation protocol, one implementation for the trainer and the CLI (SPEC "Evaluation").

Everything takes plain tensors, modules and numbers (no config object):

* :func:`evaluate_features`: what a pretraining run logs (``knn_top1``, ``knn_top5`` and, with
  ``linear_epochs > 0``, ``linear_top1``, ``linear_top5``; ``prefix="init_"`` for the
  random-init baseline of :func:`random_init_backbone`), skipped with a warning on a split of
  a single class;
* :func:`knn_scores` and :func:`linear_scores`: the two measurements it makes, with their
  counts, which ``unigrad knn`` and ``unigrad linear`` print;
* :func:`semisup_subset`, :func:`semisup_epochs` and :func:`finetune_scores`: ``unigrad
  semisup`` (fine-tuning on a class-balanced label fraction).

Accuracies are percentages.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from unigrad.core import dist
from unigrad.errors import UserError
from unigrad.eval.features import accuracy, extract_features, knn_eval
from unigrad.eval.linear import class_balanced_subset, finetune, train_linear
from unigrad.models.build import model_from_config
from unigrad.models.networks import CUSTOM


def count_classes(*labels: torch.Tensor) -> int:
    """Number of distinct labels over all the given label tensors."""
    return int(torch.unique(torch.cat([y.flatten() for y in labels])).numel())


def knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    eval_feats: torch.Tensor,
    eval_labels: torch.Tensor,
    *,
    k: int,
    t: float,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Weighted kNN (cosine, exp(sim / t) votes) of the eval features against the train bank.

    Returns:
        {"top1", "top5" (percent), "k" (clamped to the bank), "n_train", "n_eval"}.
    """
    return knn_eval(
        train_feats, train_labels, eval_feats, eval_labels, k, t, num_classes=num_classes
    )


def head_accuracy(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 (percent) of a classifier on inputs ``feats`` against ``labels``."""
    with torch.no_grad():
        return accuracy(head(feats), labels)


def linear_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    eval_feats: torch.Tensor,
    eval_labels: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Linear probe on cached features (:func:`~unigrad.eval.linear.train_linear`), scored on
    the eval features.

    Args:
        num_classes: default: the largest label of either split + 1.
        device: where the probe is trained and scored; default: where the features are.

    Returns:
        {"top1", "top5" (percent), "n_train", "n_eval"}.
    """
    if num_classes is None:
        num_classes = int(max(train_labels.max(), eval_labels.max())) + 1
    if device is not None:
        train_feats, train_labels = train_feats.to(device), train_labels.to(device)
        eval_feats, eval_labels = eval_feats.to(device), eval_labels.to(device)
    head = train_linear(
        train_feats,
        train_labels,
        num_classes,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        progress=progress,
    )
    r = head_accuracy(head, eval_feats, eval_labels)
    return {**r, "n_train": train_feats.shape[0], "n_eval": eval_feats.shape[0]}


def single_class_warning(n_classes: int, train_split: str, eval_split: str) -> str:
    """The warning of an evaluation skipped because the splits hold fewer than 2 classes."""
    return (
        f"WARNING: kNN/linear evaluation skipped: the {train_split} and "
        f"{eval_split} splits hold {n_classes} class, where accuracy is 100% "
        "by construction; give the data at least 2 class folders to evaluate"
    )


def evaluate_features(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    eval_feats: torch.Tensor,
    eval_labels: torch.Tensor,
    *,
    k: int,
    t: float,
    linear_epochs: int,
    seed: int,
    prefix: str = "",
    train_split: str = "train",
    eval_split: str = "val",
    linear_device: str | torch.device | None = "cpu",
) -> dict[str, float]:
    """What a pretraining run logs for a backbone: kNN and (``linear_epochs > 0``) the linear
    probe of its features, keys ``{prefix}knn_top1``, ``{prefix}knn_top5``,
    ``{prefix}linear_top1``, ``{prefix}linear_top5``.

    Number of classes: the largest label of either split + 1. The probe is trained with seed
    ``seed`` on ``linear_device`` (default the CPU, as the trainer always has; None: where the
    features are), without a progress bar.

    Returns:
        the scores; {} (with a warning on stderr naming the splits) when the two splits
        together hold fewer than 2 classes, where accuracy measures nothing.
    """
    n_classes = count_classes(train_labels, eval_labels)
    if n_classes < 2:
        print(single_class_warning(n_classes, train_split, eval_split), file=sys.stderr)
        return {}
    knn = knn_scores(train_feats, train_labels, eval_feats, eval_labels, k=k, t=t)
    out = {f"{prefix}knn_top1": knn["top1"], f"{prefix}knn_top5": knn["top5"]}
    if linear_epochs > 0:
        lin = linear_scores(
            train_feats,
            train_labels,
            eval_feats,
            eval_labels,
            epochs=linear_epochs,
            seed=seed,
            device=linear_device,
        )
        out[f"{prefix}linear_top1"], out[f"{prefix}linear_top5"] = lin["top1"], lin["top5"]
    return out


def score_backbone(
    eval_data: Any,
    backbone: nn.Module,
    cfg: Any,
    device: torch.device,
    final: bool,
    prefix: str = "",
) -> dict[str, float]:
    """A training run's scores of ``backbone`` on ``eval_data`` (its
    :class:`~unigrad.data.evaluation.EvalData`; None: {}): every rank extracts a shard of the
    features, rank 0 scores them with kNN and, when ``final``, the linear probe; {} elsewhere."""
    if eval_data is None:
        return {}
    feats = eval_data.features(backbone, device, limit=0 if final else cfg.knn_subset)
    if not dist.is_main():
        return {}
    return evaluate_features(
        *feats,
        k=cfg.knn_k,
        t=cfg.knn_t,
        linear_epochs=cfg.final_linear_epochs if final else 0,
        seed=cfg.seed,
        prefix=prefix,
        train_split=cfg.train_split,
        eval_split=cfg.eval_split,
    )


def random_init_backbone(record: Any, *, device: str | torch.device = "cpu") -> nn.Module | None:
    """The backbone a run of this record (a :class:`~unigrad.config.Config` or a mapping with
    its keys) initialises with its ``seed`` (the baseline a run has to beat), built where every
    run's network is (:func:`~unigrad.models.build.model_from_config`); the global RNG is left
    untouched. None, with a note on stderr, for a custom module (its architecture cannot be
    rebuilt from a record)."""
    get = record.get if isinstance(record, Mapping) else lambda k: getattr(record, k)
    if get("backbone") == CUSTOM:
        print("note: knn_baseline skipped: a custom backbone cannot be rebuilt", file=sys.stderr)
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(get("seed"))
        model = model_from_config(record)
    return model.encoder.backbone.to(device)


def semisup_epochs(fraction: float) -> int:
    """Default fine-tuning epochs for a label fraction: 60 below 10%, else 30."""
    return 60 if fraction < 0.1 else 30


def check_semisup_request(fraction: float | None, indices_given: bool) -> None:
    """Refuse a semi-supervised request without exactly one of a fraction and an index list,
    or with a fraction outside (0, 1] (before anything is loaded)."""
    if (fraction is None) == (not indices_given):
        raise UserError("pass --fraction (e.g. 0.01 for 1% of the labels) or --indices FILE")
    if fraction is not None and not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {fraction} (e.g. 0.01 for 1%)")


def semisup_subset(
    labels: torch.Tensor,
    *,
    fraction: float | None = None,
    indices: list[int] | None = None,
    seed: int = 0,
) -> tuple[list[int], float]:
    """The labelled images of a semi-supervised evaluation: ``indices`` as given, else a
    class-balanced ``fraction`` of ``labels`` [N] drawn with ``seed``.

    Returns:
        (sorted or given indices, the fraction they are: ``fraction``, else len / N).

    Raises:
        UserError: as :func:`check_semisup_request`, or fewer than 2 images (batch norm in
            train mode cannot take one).
    """
    check_semisup_request(fraction, indices is not None)
    idx = indices if indices is not None else class_balanced_subset(labels, fraction, seed)
    if len(idx) < 2:
        raise UserError(f"the label subset has {len(idx)} image; raise --fraction")
    return idx, fraction or len(idx) / len(labels)


def finetune_scores(
    backbone: nn.Module,
    train_loader: Any,
    eval_loader: Any,
    num_classes: int,
    device: torch.device,
    *,
    epochs: int,
    lr: float = 0.01,
    head_lr: float = 0.1,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` + a new linear head on ``train_loader`` (the labelled subset,
    augmented) with :func:`~unigrad.eval.linear.finetune`, then score it on ``eval_loader``.

    Returns:
        {"top1", "top5" (percent), "n_eval"}.
    """
    model = finetune(
        backbone,
        train_loader,
        num_classes,
        device,
        epochs=epochs,
        lr=lr,
        head_lr=head_lr,
        progress=progress,
    )
    logits, labels = extract_features(model, eval_loader, device, progress=progress)
    return {**accuracy(logits, labels), "n_eval": len(labels)}
