"""In-memory splits: every image decoded once into one uint8 tensor, cached on disk.

For data that fits in memory (CIFAR, STL-10 scale): decoding 45,000 32 px JPEGs takes seconds
(torchvision.io's libjpeg, ~3x faster than PIL on small images, PIL for other formats and once
torchvision drops its deprecated decoders), a cached split loads in well under a second,
and the fast pipeline (:class:`unigrad.data.batched.FastAugment`) augments whole batches of it.
``pipeline: auto`` uses :func:`choose_pipeline` to pick it when the split fits. A source's
:meth:`~unigrad.data.sources.Source.load_uint8` gives its split in this form (folders through
:func:`load_folder`, with the cache).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import statistics
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from unigrad.data.datasets import (
    DECODE_ERRORS,
    SafeImageFolder,
    bad_image_error,
    load_rgb,
    warn_skipped,
)
from unigrad.errors import UserError

try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # deprecated in torchvision 0.29, to be removed: PIL decodes everything
    decode_image = None

CACHE_VERSION = 2  # 2: mixed sizes become a square (common_size), not the most frequent size


@dataclass
class Uint8Split:
    """A split decoded into memory; unpacks as ``images, labels, classes = split``.

    Attributes:
        images: [N, 3, H, W] uint8, RGB.
        labels: [N] int64.
        classes: class names, ``labels`` index them.
        skipped: unreadable files left out (``bad_images="skip"``).
        n_resized: images of another size brought to the common size.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    skipped: list[str] = field(default_factory=list)
    n_resized: int = 0

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.images, self.labels, self.classes))


def default_cache_dir() -> Path:
    """``$UNIGRAD_CACHE``, else ``$XDG_CACHE_HOME/unigrad``, else ``~/.cache/unigrad``."""
    if os.environ.get("UNIGRAD_CACHE"):
        return Path(os.environ["UNIGRAD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unigrad"


def load_folder(
    folder: SafeImageFolder,
    size: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> Uint8Split:
    """Decode every image of a folder split once into one uint8 tensor.

    All images get one common size (:func:`common_size`): ``size`` x ``size`` if given, else
    the images' own size when they share one, else a square of their median shorter side; an
    image of another size is resized to cover it (antialiased) and centre-cropped, with one
    warning giving the count. The tensor is cached in
    ``cache_dir/<parent>-<split>-<key>.pt`` (default :func:`default_cache_dir`), written
    atomically; the key hashes the folder path, ``size`` and every file's path, label, byte size
    and mtime, so any change to the files rebuilds it (an unreadable cache file is rebuilt too).
    Unreadable files follow ``folder.bad_images`` (a cached one fails again in ``fail`` mode).

    Args:
        folder: the split (its ``bad_images`` says whether to skip or refuse unreadable files).
        size: common side length (None: see :func:`common_size`).
        cache_dir: where cached tensors live.
        use_cache: read and write the cache.
    """
    path = _cache_path(Path(folder.root), folder.samples, size, cache_dir)
    out = _read_cache(path) if use_cache else None
    if out is not None:
        if folder.bad_images == "fail" and out.skipped:
            raise bad_image_error(out.skipped[0], _decode_error(out.skipped[0]))
        return out
    out = _decode_folder(folder, size)
    if use_cache:
        _save_atomic(out, path)
    return out


def _cache_path(
    folder: Path, samples: list[tuple[str, int]], size: int | None, cache_dir: str | Path | None
) -> Path:
    h = hashlib.sha256(f"{CACHE_VERSION}|{folder.resolve()}|{size}".encode())
    for p, target in samples:
        st = os.stat(p)
        h.update(f"|{p}:{target}:{st.st_size}:{st.st_mtime_ns}".encode())
    name = f"{folder.resolve().parent.name}-{folder.name}-{h.hexdigest()[:20]}.pt"
    return Path(cache_dir or default_cache_dir()) / name


def _read_cache(path: Path) -> Uint8Split | None:
    if not path.is_file():
        return None
    try:
        return Uint8Split(**torch.load(path, weights_only=True))
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, TypeError) as e:
        warnings.warn(f"ignoring unreadable image cache {path} ({e}); rebuilding", stacklevel=3)
        return None


def _decode(path: str) -> torch.Tensor:
    """[3, H, W] uint8 RGB: torchvision.io (libjpeg/libpng), PIL for anything else."""
    if decode_image is not None:
        try:
            with open(path, "rb") as f:
                raw = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
            img = decode_image(raw, ImageReadMode.RGB)
            if img.dtype == torch.uint8 and img.shape[0] == 3:
                return img
        except (RuntimeError, ValueError):
            pass
    return torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1)


def _decode_error(path: str) -> BaseException:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            _decode(path)
    except DECODE_ERRORS as e:
        return e
    return OSError("unreadable when the cache was built")


def _decode_folder(folder: SafeImageFolder, size: int | None) -> Uint8Split:
    images, labels, skipped = [], [], []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        for p, target in folder.samples:
            try:
                images.append(_decode(p))
            except DECODE_ERRORS as e:
                if folder.bad_images == "fail":
                    raise bad_image_error(p, e) from None
                warn_skipped(p, e)
                skipped.append(p)
                continue
            labels.append(target)
    if not images:
        raise UserError(f"no readable image in {folder.root}; check the files (e.g. open one)")
    stacked, n_resized = common_size(images, size)
    return Uint8Split(stacked, torch.tensor(labels), folder.classes, skipped, n_resized)


def common_side(images: list[torch.Tensor]) -> tuple[int, int]:
    """(H, W) that images [3, h, w] of mixed sizes share: a square of their median shorter
    side (the most of every image that one square keeps); their own size when they share one.
    """
    sizes = {tuple(x.shape[1:]) for x in images}
    if len(sizes) == 1:
        return sizes.pop()  # type: ignore[return-value]
    side = int(statistics.median_low(min(x.shape[1:]) for x in images))
    return side, side


def common_size(images: list[torch.Tensor], size: int | None) -> tuple[torch.Tensor, int]:
    """Stack [3, h, w] images into [N, 3, H, W] (H x W: ``size`` x ``size``, else
    :func:`common_side`), resizing the others so that they cover it (the shorter side, for a
    square) and centre-cropping them."""
    hw = (size, size) if size else common_side(images)
    odd = [i for i, x in enumerate(images) if tuple(x.shape[1:]) != tuple(hw)]
    for i in odd:
        h, w = images[i].shape[1:]
        s = max(hw[0] / h, hw[1] / w)
        x = v2.functional.resize(images[i], [math.ceil(h * s), math.ceil(w * s)], antialias=True)
        images[i] = v2.functional.center_crop(x, list(hw))
    if odd:
        warnings.warn(
            f"resized {len(odd)} of {len(images)} images to the common size {hw[0]}x{hw[1]} "
            "(shorter side + centre crop); use --set pipeline=standard to crop from the originals",
            stacklevel=3,
        )
    return torch.stack(images), len(odd)


def _save_atomic(split: Uint8Split, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(asdict(split), tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the image cache {path} ({e}); continuing", stacklevel=3)


def fits_in_memory(n: int, height: int, width: int, budget_bytes: int | None = None) -> bool:
    """Whether N x 3 x H x W uint8 fits the budget (default: a quarter of RAM, at most 16 GiB)."""
    if budget_bytes is None:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        budget_bytes = min(ram // 4, 16 << 30)
    return n * 3 * height * width <= budget_bytes


def choose_pipeline(pipeline: str, n: int, height: int, width: int) -> str:
    """``fast`` or ``standard``; ``auto`` is fast when the split fits in memory."""
    if pipeline != "auto":
        return pipeline
    return "fast" if fits_in_memory(n, height, width) else "standard"
