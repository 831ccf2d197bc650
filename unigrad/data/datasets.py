"""Datasets: ImageFolder splits (``DIR/train``, ``DIR/val``, ``DIR/test``) or torchvision sets.

Every image is converted to RGB (grayscale, palette and RGBA inputs work). Unreadable images
(truncated or corrupt files) are found when they are decoded: with ``bad_images="skip"`` they are
skipped with a warning and counted (``n_skipped``), with ``bad_images="fail"`` they stop the run
with a :class:`~unigrad.errors.UserError` naming the file.

Two ways to feed a trainer: per image (:func:`open_split`, any image size, augmented in DataLoader
workers) or in memory (:func:`unigrad.data.inmemory.load_uint8`: one uint8 tensor, decoded once and
cached on disk, augmented as whole batches); :class:`EpochSampler` orders both.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from unigrad.errors import UserError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
TORCHVISION = ("cifar10", "cifar100", "stl10")
BAD_IMAGES = ("skip", "fail")
#: What a failed decode raises: PIL (truncated: OSError, unknown format: UnidentifiedImageError,
#: a subclass of OSError; broken headers: SyntaxError, ValueError), torchvision.io: RuntimeError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, RuntimeError, Image.DecompressionBombError)
LAYOUT = "--data DIR with ImageFolder splits (DIR/train/<class>/*.jpg, optional DIR/val, DIR/test)"


def to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGBA").convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Decode one file fully (so a truncated file raises here, not later) as an RGB image."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
        return to_rgb(img)


def mix_seed(*ints: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. (seed, epoch) or (seed, epoch, index)."""
    words = [(int(i) >> shift) & 0xFFFFFFFF for i in ints for shift in (0, 32)]  # fixed width
    entropy = [len(ints), *words]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


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


def split_dir(data: str, split: str) -> Path:
    """``data/split``, or a UserError naming what is missing and what to pass instead."""
    if not Path(data).is_dir():
        raise UserError(
            f"data folder {data} does not exist; pass {LAYOUT}, or --dataset cifar10 --download"
        )
    path = Path(data) / split
    if not path.is_dir():
        have = available_splits(data)
        raise UserError(
            f"split {split!r} not found: {path} is missing (found: {', '.join(have) or 'none'}); "
            f"create {path}/<class>/ or choose one of the splits found"
        )
    return path


def check_bad_images(bad_images: str) -> None:
    if bad_images not in BAD_IMAGES:
        raise UserError(f"bad_images must be one of {', '.join(BAD_IMAGES)}, got {bad_images!r}")


def bad_image_error(path: str, err: BaseException) -> UserError:
    return UserError(
        f"cannot decode image {path} ({type(err).__name__}: {err}); delete or replace the file, "
        "or pass --set bad_images=skip to skip unreadable images"
    )


def warn_skipped(path: str, err: BaseException) -> None:
    warnings.warn(f"skipping unreadable image {path} ({type(err).__name__}: {err})", stacklevel=3)


class SafeImageFolder(datasets.ImageFolder):
    """ImageFolder with RGB decoding, empty-class checks and unreadable-file handling.

    An unreadable file is replaced by the next readable sample (index + 1, + 2, ... mod N), so
    a given index always yields the same sample. ``n_skipped`` counts the distinct bad files this
    process met (each DataLoader worker keeps its own count; warnings come from the workers).

    Args:
        root: a split folder, ``root/<class>/<image>``.
        transform: applied to the RGB PIL image.
        bad_images: ``skip`` (warn, substitute, count) or ``fail`` (raise a UserError).
    """

    def __init__(self, root: str, transform: Any = None, bad_images: str = "skip") -> None:
        check_bad_images(bad_images)
        try:
            super().__init__(root, transform=transform, loader=load_rgb, allow_empty=True)
        except FileNotFoundError:
            raise UserError(
                f"no class folders in {root}; put images in {root}/<class>/*.jpg ({LAYOUT})"
            ) from None
        counts = Counter(self.targets)
        empty = [c for i, c in enumerate(self.classes) if counts[i] == 0]
        if empty:
            raise UserError(
                f"class folder(s) with no images in {root}: {', '.join(empty)}; add images "
                f"({', '.join(datasets.folder.IMG_EXTENSIONS)}) or remove the folder(s)"
            )
        self.bad_images = bad_images
        self.bad: dict[str, str] = {}

    @property
    def n_skipped(self) -> int:
        return len(self.bad)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index = int(index)
        for k in range(len(self.samples)):
            path, target = self.samples[(index + k) % len(self.samples)]
            if path in self.bad:
                continue
            try:
                img = self.loader(path)
            except DECODE_ERRORS as e:
                if self.bad_images == "fail":
                    raise bad_image_error(path, e) from None
                self.bad[path] = f"{type(e).__name__}: {e}"
                warn_skipped(path, e)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, target
        raise UserError(f"no readable image in {self.root}; check the files (e.g. open one)")


def open_split(
    *,
    data: str | None = None,
    dataset: str | None = None,
    split: str = "train",
    download: bool = False,
    transform: Any = None,
    root: str = "data",
    bad_images: str = "skip",
) -> torch.utils.data.Dataset:
    """One split as a dataset of (image, label); images are RGB PIL unless ``transform`` is set.

    Args:
        data: an ImageFolder root with ``train/`` and optionally ``val/``, ``test/``.
        dataset: a torchvision dataset name (cifar10, cifar100, stl10), stored under ``root``.
        split: train, val or test (torchvision sets: val and test both mean the test split).
        download: let torchvision download ``dataset`` into ``root`` if it is not there.
        transform: applied to each RGB PIL image.
        root: where torchvision datasets live.
        bad_images: ImageFolder only: ``skip`` or ``fail`` on unreadable files.
    """
    if data is not None:
        return SafeImageFolder(str(split_dir(data, split)), transform, bad_images)
    if dataset not in TORCHVISION:
        raise UserError(f"pass {LAYOUT}, or --dataset {'|'.join(TORCHVISION)}")
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


def resolve_source(
    data: str | None,
    dataset: str | None,
    fallback_dataset: str | None,
    download: bool,
    root: str = "data",
) -> tuple[str | None, str | None]:
    """Which source to read: ``(data, None)`` for a folder, ``(None, name)`` for torchvision.

    A missing ``data`` folder (or none given) falls back to the torchvision set
    ``fallback_dataset`` under ``root``, downloaded there if it is not yet (asking for a
    fallback is asking for the download). Fails with a UserError that says what to pass when
    neither source can be read.
    """
    if data is not None and Path(data).is_dir():
        return data, None
    if data is None and dataset is not None:
        return None, _check_torchvision(dataset, download, root)
    if fallback_dataset is None:
        if data is None:
            raise UserError(f"no data given; pass {LAYOUT}, or --dataset NAME --download")
        split_dir(data, "train")  # raises the missing-folder error
    if data is not None:
        warnings.warn(
            f"data folder {data} not found; using {fallback_dataset} under {root}/", stacklevel=2
        )
    return None, _check_torchvision(str(fallback_dataset), True, root)


def _check_torchvision(dataset: str, download: bool, root: str) -> str:
    if dataset not in TORCHVISION:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(TORCHVISION)}")
    try:
        open_split(dataset=dataset, split="train", download=download, root=root)
    except UserError:
        raise UserError(
            f"{dataset} is not under {root}/; pass --dataset {dataset} --download to fetch it, "
            f"or {LAYOUT}"
        ) from None
    except Exception as e:  # network errors come as URLError, OSError, HTTPError, ...
        raise UserError(
            f"could not download {dataset} into {root}/ ({type(e).__name__}: {e}); without "
            f"network pass {LAYOUT}, or put the {dataset} files under {root}/ and pass "
            f"--dataset {dataset}"
        ) from None
    return dataset


def _rgb(transform: Any) -> Any:
    if transform is None:
        return to_rgb
    return v2.Compose([to_rgb, transform])


class EpochSampler:
    """Batches of one epoch: a permutation that depends only on (seed, epoch).

    Every global batch of ``batch_size`` indices is split over ranks, rank ``r`` taking the
    ``r``-th slice of ``batch_size // world_size``; the last incomplete global batch is dropped.
    Iteration starts at global batch ``start_batch``, so a run resumed mid-epoch sees exactly
    the batches it had not seen. Yields [batch_size // world_size] int64 index tensors; usable as
    a DataLoader ``batch_sampler`` and to index an in-memory tensor.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        if not 0 <= rank < world_size <= batch_size:
            raise ValueError(f"need 0 <= rank < world_size <= batch_size, got {rank}, {world_size}")
        if n < batch_size:
            raise UserError(
                f"the split has {n} images, fewer than one batch of {batch_size}; "
                "lower --batch-size or add images"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = batch_size // world_size
        self.set_epoch(epoch, start_batch)

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_per_epoch}]")
        self.epoch, self.start_batch = epoch, start_batch

    def permutation(self) -> torch.Tensor:
        """[N] int64: this epoch's order of all samples."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        perm = self.permutation()
        lo = self.rank * self.per_rank
        for b in range(self.start_batch, self.batches_per_epoch):
            yield perm[b * self.batch_size + lo : b * self.batch_size + lo + self.per_rank]
