"""Datasets: ImageFolder splits (``DIR/train``, ``DIR/val``, ``DIR/test``) or torchvision sets.

Every image is converted to RGB (grayscale, palette and RGBA inputs work).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from unigrad.errors import UserError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
TORCHVISION = ("cifar10", "cifar100", "stl10")


def to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGBA").convert("RGB")


def eval_transform(image_size: int) -> v2.Compose:
    """Deterministic evaluation view: (resize + centre crop for large images) -> normalised."""
    ops: list[Any] = [v2.PILToTensor()]
    if image_size > 64:
        ops += [v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
    else:
        ops += [v2.Resize((image_size, image_size), antialias=True)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(ops)


def available_splits(data: str) -> list[str]:
    root = Path(data)
    return [s for s in SPLITS if (root / s).is_dir()]


def open_split(
    *,
    data: str | None = None,
    dataset: str | None = None,
    split: str = "train",
    download: bool = False,
    transform: Any = None,
    root: str = "data",
) -> torch.utils.data.Dataset:
    """One split as a dataset of (image, label); images are RGB PIL unless ``transform`` is set.

    Args:
        data: an ImageFolder root with ``train/`` and optionally ``val/``, ``test/``.
        dataset: a torchvision dataset name (cifar10, cifar100, stl10), stored under ``root``.
        split: train, val or test (torchvision sets: val and test both mean the test split).
    """
    if data is not None:
        path = Path(data) / split
        if not Path(data).is_dir():
            raise UserError(
                f"data folder {data} does not exist; pass --data DIR with ImageFolder "
                "splits (DIR/train/<class>/*.jpg) or --dataset cifar10 --download"
            )
        if not path.is_dir():
            have = available_splits(data)
            raise UserError(
                f"split {split!r} not found: {path} is missing (found: "
                f"{', '.join(have) or 'none'}); pass a split that exists"
            )
        return datasets.ImageFolder(str(path), transform=_rgb(transform))
    if dataset not in TORCHVISION:
        raise UserError(f"pass --data DIR or --dataset {'|'.join(TORCHVISION)}")
    train = split == "train"
    try:
        if dataset == "stl10":
            return datasets.STL10(
                root,
                split="train" if train else "test",
                download=download,
                transform=_rgb(transform),
            )
        cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
        return cls(root, train=train, download=download, transform=_rgb(transform))
    except RuntimeError as e:
        raise UserError(f"{dataset} not found under {root}/ ({e}); add --download") from None


def _rgb(transform: Any) -> Any:
    if transform is None:
        return to_rgb
    return v2.Compose([to_rgb, transform])
