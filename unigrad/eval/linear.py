"""Classifiers on a pretrained backbone: linear probe (frozen backbone) and semi-supervised
fine-tuning (whole network), SPEC "Evaluation" / paper Table 11.

One training loop (:func:`fit`: SGD + Nesterov, per-step cosine lr) serves all three, fed by a
batch source: cached features, augmented images through the frozen backbone, or images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from unigrad.data.datasets import MEAN, STD
from unigrad.errors import UserError
from unigrad.eval.features import extract_features, progress_bar

#: Batches are (inputs, labels); a source yields one epoch of them each time it is called.
BatchSource = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def train_transform(image_size: int, scale_min: float = 0.08) -> v2.Compose:
    """Augmentation of the linear (``--augment``) and fine-tuning protocols: random resized
    crop (scale ``scale_min``..1) and horizontal flip, normalised like the eval view."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(image_size, scale=(scale_min, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


def fit(
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    batches: BatchSource,
    steps_per_epoch: int,
    epochs: int,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    progress: bool | None = None,
    desc: str = "train",
) -> float:
    """Cross-entropy training of ``model`` (inputs -> logits [B, K]): SGD with Nesterov momentum,
    per-step cosine learning rate from each group's ``lr`` to 0. Returns the last loss."""
    opt = torch.optim.SGD(
        param_groups, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps_per_epoch))
    loss = torch.zeros(())
    device = next(model.parameters()).device
    with progress_bar(range(epochs * steps_per_epoch), desc, progress) as bar:
        for epoch in range(epochs):
            for x, y in batches():
                with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                    loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    return float(loss.detach())


def _shuffled(
    feats: torch.Tensor, labels: torch.Tensor, bs: int, gen: torch.Generator
) -> BatchSource:
    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(feats.shape[0], generator=gen).to(feats.device)
        for s in range(0, feats.shape[0], bs):
            i = order[s : s + bs]
            yield feats[i], labels[i]

    return epoch


def fold_standardization(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """The linear map on raw features equal to ``head`` on (x - mean) / std, x: [B, D]."""
    out = nn.Linear(head.in_features, head.out_features).to(head.weight.device)
    with torch.no_grad():
        out.weight.copy_(head.weight / std)
        out.bias.copy_(head.bias - out.weight @ mean)
    return out


def _moments(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (floored at 1e-6 for dead channels) of feats [N, D]."""
    return feats.mean(0), feats.std(0).clamp_min(1e-6)


def _fit_probe(
    mean: torch.Tensor,
    std: torch.Tensor,
    num_classes: int,
    batches: BatchSource,
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    **fit_kw: Any,
) -> nn.Linear:
    """A zero-initialised linear layer trained on (x - mean) / std of the raw features x that
    ``batches`` yields, returned with the standardisation folded in (it takes raw features)."""
    head = nn.Linear(mean.numel(), num_classes).to(mean.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)

    def standardized() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in batches():
            yield (x - mean) / std, y

    fit(
        head,
        [{"params": list(head.parameters()), "lr": lr}],
        standardized,
        steps_per_epoch,
        epochs,
        **fit_kw,
    )
    return fold_standardization(head, mean, std)


def train_linear(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 90,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool | None = None,
) -> nn.Linear:
    """Linear probe on cached features [N, D] with labels [N] (no BN, no augmentation).

    The features are standardised with the training set's per-channel mean and std (so one lr
    suits any backbone); the standardisation is folded into the returned layer, which takes
    raw features. Zero-initialised; SGD + Nesterov, cosine lr, shuffled mini-batches.
    """
    mean, std = _moments(feats)
    batches = _shuffled(feats, labels, batch_size, torch.Generator().manual_seed(seed))
    steps = -(-feats.shape[0] // batch_size)
    return _fit_probe(
        mean,
        std,
        num_classes,
        batches,
        steps,
        epochs,
        lr=lr,
        weight_decay=weight_decay,
        progress=progress,
        desc="linear",
    )


def train_linear_augmented(
    backbone: nn.Module,
    loader: Any,
    num_classes: int,
    device: torch.device,
    *,
    epochs: int = 90,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    stat_batches: int = 20,
    progress: bool | None = None,
) -> nn.Linear:
    """The standard protocol: every epoch's augmented images (``loader``) go through the frozen
    backbone (eval mode) into the linear layer. Standardisation as :func:`train_linear`, with
    mean and std from the first ``stat_batches`` augmented batches."""
    mean, std = _moments(
        extract_features(backbone, loader, device, max_batches=stat_batches, progress=False)[0]
    )
    backbone.eval()

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with (
                torch.no_grad(),
                torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"),
            ):
                z = backbone(x).float()
            yield z, y.to(device, non_blocking=True)

    return _fit_probe(
        mean,
        std,
        num_classes,
        batches,
        len(loader),
        epochs,
        lr=lr,
        weight_decay=weight_decay,
        progress=progress,
        desc="linear (augmented)",
    )


def class_balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> list[int]:
    """Sorted indices of round(fraction * n_c) (at least 1) random samples of each class c.

    Args:
        labels: [N] integer class labels of the training split.
        fraction: in (0, 1].
    """
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        n = max(1, round(fraction * len(idx)))
        chosen += idx[torch.randperm(len(idx), generator=gen)[:n]].tolist()
    return sorted(chosen)


def finetune(
    backbone: nn.Module,
    loader: Any,
    num_classes: int,
    device: torch.device,
    *,
    epochs: int = 30,
    lr: float = 0.01,
    head_lr: float = 0.1,
    weight_decay: float = 0.0,
    progress: bool | None = None,
) -> nn.Sequential:
    """Semi-supervised fine-tuning: backbone + a new linear head trained end to end (BN in
    train mode) on the labelled subset in ``loader`` (augmented images, labels).

    Returns:
        the classifier [B, 3, H, W] -> [B, num_classes], in eval mode.
    """
    backbone.to(device)
    with torch.no_grad():  # feature dim from one real batch, in eval mode
        dim = extract_features(backbone, loader, device, max_batches=1, progress=False)[0].shape[1]
    head = nn.Linear(dim, num_classes)
    # channels_last only on CUDA: on CPU (torch 2.14.1, oneDNN 3.12) the backward of a 1x1
    # stride-2 convolution with few channels (8 -> 16) and an odd batch corrupts the heap.
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = nn.Sequential(backbone, head).to(device, memory_format=fmt).train()

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loader:
            yield (
                x.to(device, non_blocking=True).contiguous(memory_format=fmt),
                y.to(device, non_blocking=True),
            )

    groups = [
        {"params": list(backbone.parameters()), "lr": lr},
        {"params": list(head.parameters()), "lr": head_lr},
    ]
    fit(
        model,
        groups,
        batches,
        len(loader),
        epochs,
        weight_decay=weight_decay,
        progress=progress,
        desc="fine-tune",
    )
    return model.eval()
