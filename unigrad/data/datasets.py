"""Image folders and samplers: ImageFolder splits (``DIR/train``, ``DIR/val``, ``DIR/test``).

Every image is converted to RGB (grayscale, palette and RGBA inputs work; 16-bit greys are
scaled to 8 bits). Unreadable images (truncated or corrupt files) are found when they are
decoded: with ``bad_images="skip"`` they are skipped with a warning and counted
(``n_skipped``), with ``bad_images="fail"`` they stop the run
with a :class:`~unigrad.errors.UserError` naming the file.

Where a run's images come from (a folder, a torchvision set, ...) is a
:class:`~unigrad.data.sources.Source`; this module holds what the folder source is made of
(:class:`SafeImageFolder`, :func:`split_dir`) and :class:`EpochSampler`, which orders every
pipeline's batches.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import datasets

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
    """Any PIL image as RGB. Integer greys (``I;16*``: 16-bit PNG and TIFF; ``I``, what older
    Pillow opens them as) are scaled from 16 to 8 bits (v / 257: 65535 -> 255), which Pillow's
    own conversion would clip at 255 (a white image)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        grey = np.clip(np.asarray(img, dtype=np.float64) / 257, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGBA").convert("RGB")


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


def available_splits(data: str) -> list[str]:
    root = Path(data)
    return [s for s in SPLITS if (root / s).is_dir()]


def missing_folder_error(data: str) -> UserError:
    """The error for a ``--data`` folder that does not exist (or is a file), saying what to
    pass instead."""
    if Path(data).is_file():
        return UserError(f"--data {data} is a file, not a folder; pass {LAYOUT}")
    return UserError(
        f"data folder {data} does not exist; pass {LAYOUT}, or --dataset cifar10 --download"
    )


def split_dir(data: str, split: str) -> Path:
    """``data/split``, or a UserError naming what is missing and what to pass instead."""
    if not Path(data).is_dir():
        raise missing_folder_error(data)
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


#: The unreadable files this process has warned about (each once, whichever split met it).
_WARNED: set[str] = set()


def warn_skipped(path: str, err: BaseException | str) -> None:
    """Warn that ``path`` is skipped, once per file and process."""
    if path in _WARNED:
        return
    _WARNED.add(path)
    reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    warnings.warn(f"skipping unreadable image {path} ({reason})", stacklevel=3)


class BadImages:
    """The unreadable files of one dataset, met in this process or in its DataLoader workers.

    A worker sends each file it finds unreadable to the main process (a queue, inherited with
    the dataset); :meth:`collect` there takes them in, so every file is warned about once,
    however many workers met it, and :meth:`__len__` counts the files found so far.
    """

    def __init__(self) -> None:
        self.found: dict[str, str] = {}  # path -> reason, as this process knows them
        self._queue: Any = mp.get_context().Queue()

    def __contains__(self, path: str) -> bool:
        return path in self.found

    def __len__(self) -> int:
        self.collect()
        return len(self.found)

    def add(self, path: str, err: BaseException) -> None:
        """Record ``path``: warn here (main process) or report it (a worker)."""
        reason = f"{type(err).__name__}: {err}"
        self.found[path] = reason
        if torch.utils.data.get_worker_info() is None:
            warn_skipped(path, reason)
        else:
            self._queue.put((path, reason))

    def collect(self) -> None:
        """Take in the files the workers reported (main process), warning once per new file."""
        while True:
            try:
                path, reason = self._queue.get_nowait()
            except queue.Empty:
                return
            if path not in self.found:
                self.found[path] = reason
                warn_skipped(path, reason)


class SafeImageFolder(datasets.ImageFolder):
    """ImageFolder with RGB decoding, empty-class checks and unreadable-file handling.

    An unreadable file is replaced by the next readable sample (index + 1, + 2, ... mod N), so
    a given index always yields the same sample. ``n_skipped`` counts the distinct bad files met
    so far, also by DataLoader workers (:class:`BadImages`, ``bad``: one warning per file).

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
        self.bad = BadImages()

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
                self.bad.add(path, e)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, target
        raise UserError(f"no readable image in {self.root}; check the files (e.g. open one)")


class EpochSampler:
    """Batches of one epoch: a permutation that depends only on (seed, epoch).

    Every global batch of ``batch_size`` indices is split over ranks, rank ``r`` taking the
    ``r``-th slice of ``batch_size // world_size``; the last incomplete global batch is dropped.
    Iteration starts at global batch ``start_batch``, so a run resumed mid-epoch sees exactly
    the batches it had not seen. Yields [batch_size // world_size] int64 index tensors (on
    ``device``, default the CPU); usable as a DataLoader ``batch_sampler`` and to index an
    in-memory tensor.
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
        device: torch.device | None = None,
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
        self.device = device
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
        if self.device is not None:
            perm = perm.to(self.device)  # once per epoch: the batches are slices of it
        lo = self.rank * self.per_rank
        for b in range(self.start_batch, self.batches_per_epoch):
            yield perm[b * self.batch_size + lo : b * self.batch_size + lo + self.per_rank]
