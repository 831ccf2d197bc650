"""Data sources: where a run's images come from, one class per kind of source.

A :class:`Source` has named splits (``train``, ``val``, ``test``); :meth:`Source.open` gives one
as a Dataset of ``(image, label)`` items (RGB PIL images unless a transform is given). A source
also says how large its images are (:meth:`Source.image_side`, for ``image_size: null``), how
many a split holds (:meth:`Source.shape`, for ``pipeline: auto``), its classes, and gives a split
as one uint8 tensor for the fast pipeline (:meth:`Source.load_uint8`). The training pipelines
(:mod:`unigrad.data.pipeline`), the evaluation (:mod:`unigrad.data.evaluation`) and the CLI
read images through this interface only; :func:`source_from_config` builds the source that a
configuration (or anything with its ``data``, ``dataset``, ``download``, ``fallback_dataset``,
``bad_images`` attributes) asks for.

Built in: :class:`FolderSource` (``--data DIR``: ImageFolder splits ``DIR/train``, ``DIR/val``,
``DIR/test``; unreadable files skipped or refused, ``bad_images``) and
:class:`TorchvisionSource` (``--dataset cifar10|cifar100|stl10 [--download]``, and
``fallback_dataset``: the set downloaded when the ``--data`` folder does not exist). Datasets
passed to the Trainer from Python are a :class:`~unigrad.data.user_data.DatasetSource` (not
registered: no config value names them).

**Adding a kind of source** (e.g. one that streams ImageNet-size JPEG folders) is one class in
any module, registered with :func:`register_source`; no other code changes::

    @register_source
    class JpegStream(Source):
        kind = "stream"  # selected by --data stream:/datasets/imagenet

        def __init__(self, location: str) -> None: ...
        def splits(self) -> tuple[str, ...]: ...  # the splits that exist
        def open(self, split, transform=None) -> Dataset: ...  # (image, label) items

The default :meth:`Source.from_config` claims ``data: "<kind>:<location>"`` and returns
``cls(location)``; override it to claim something else. :func:`source_from_config` asks the
registered kinds newest first, so a later registration may also take over data that a built-in
source would read. The other methods have defaults that read the first images through
:meth:`Source.open` (:meth:`Source.load_uint8` decodes the whole split: ``pipeline: auto`` only
asks for it when :meth:`Source.shape` says the split fits in memory).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from unigrad.data import inmemory
from unigrad.data.datasets import (
    DECODE_ERRORS,
    LAYOUT,
    SPLITS,
    TORCHVISION,
    SafeImageFolder,
    available_splits,
    check_bad_images,
    missing_folder_error,
    split_dir,
    to_rgb,
)
from unigrad.errors import UserError

#: image_size for data whose images are larger than this, or of varying size.
LARGE_IMAGE_SIZE = 224


def image_hw(img: Any) -> tuple[int, int]:
    """(height, width) of a PIL image or a [..., H, W] tensor."""
    return (img.height, img.width) if hasattr(img, "height") else tuple(img.shape[-2:])


class Source(ABC):
    """A data source: named splits of labelled RGB images (see the module docstring)."""

    #: the registry key (:data:`SOURCES`), and the prefix of ``data: "<kind>:<location>"``.
    kind: ClassVar[str] = ""

    @classmethod
    def from_config(cls, cfg: Any, root: str = "data") -> Source | None:
        """This kind's source for the config's data keys, or None when it asks for another.

        ``root``: where downloaded sets are stored (the CLI's ``--data-root``).
        """
        data = getattr(cfg, "data", None)
        prefix = f"{cls.kind}:"
        if cls.kind and isinstance(data, str) and data.startswith(prefix):
            return cls(data[len(prefix) :])  # type: ignore[call-arg]
        return None

    @abstractmethod
    def splits(self) -> tuple[str, ...]:
        """The splits this source holds."""

    @abstractmethod
    def open(self, split: str, transform: Callable[[Any], Any] | None = None) -> Dataset:
        """One split as a Dataset of ``(image, label)``: RGB PIL, or ``transform(image)``."""

    def has_split(self, split: str) -> bool:
        return split in self.splits()

    def classes(self, split: str = "train") -> list[str] | None:
        """The class names that the labels index (None where the source names none)."""
        return getattr(self.open(split), "classes", None)

    def labelled(self, split: str) -> bool:
        """Whether the split's items carry real labels (default: yes; a source of unlabelled
        images says no, and its training batches then carry none)."""
        return True

    def num_classes(self, split: str = "train") -> int | None:
        names = self.classes(split)
        return None if names is None else len(names)

    def image_sizes(self, ds: Any, n: int) -> Iterator[tuple[int, int]]:
        """(height, width) of the readable images among the first ``n`` of ``ds``, a split
        this source opened. Default: the images decoded."""
        for i in range(min(n, len(ds))):
            yield image_hw(ds[i][0])

    def shape(self, split: str) -> tuple[int, int, int]:
        """(N, H, W): the split's image count and its first readable image's size."""
        ds = self.open(split)
        first = next(self.image_sizes(ds, 100), None)
        if first is None:
            where = getattr(ds, "root", f"the {split} split")
            raise UserError(f"no readable image among the first files of {where}; check the files")
        return (len(ds), *first)

    def image_side(self, split: str, n_probe: int = 16) -> int:
        """The training side length the images suggest: their side when the first ``n_probe``
        share one size of at most 224 px (CIFAR: 32, STL-10: 96), else 224."""
        sizes = set(self.image_sizes(self.open(split), n_probe))
        if len(sizes) != 1:
            return LARGE_IMAGE_SIZE
        return min(*sizes.pop(), LARGE_IMAGE_SIZE)

    def load_uint8(self, split: str, size: int | None = None) -> inmemory.Uint8Split:
        """The whole split decoded into [N, 3, H, W] uint8 at one common size (``size``, else
        the images' own when they share one, else a square; see
        :func:`unigrad.data.inmemory.common_size`)."""
        ds: Any = self.open(split, v2.ToImage())
        items = [ds[i] for i in range(len(ds))]
        images, n_resized = inmemory.common_size(
            [x.as_subclass(torch.Tensor) for x, _ in items], size
        )
        labels = torch.tensor([int(y) for _, y in items])
        names = list(getattr(ds, "classes", None) or [])
        return inmemory.Uint8Split(images, labels, names, [], n_resized)


#: Source classes by kind, in registration order (:func:`source_from_config` asks the newest first).
SOURCES: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Register a :class:`Source` class under its ``kind`` (usable as a decorator); registering
    a kind again replaces the earlier class."""
    if not (isinstance(cls, type) and issubclass(cls, Source) and cls.kind):
        raise TypeError(f"register_source needs a Source subclass with a kind, got {cls!r}")
    SOURCES.pop(cls.kind, None)
    SOURCES[cls.kind] = cls
    return cls


def source_from_config(cfg: Any, root: str = "data") -> Source:
    """The source ``cfg`` asks for: the first registered kind, newest first, whose
    :meth:`Source.from_config` claims it. A UserError says what to pass when none does."""
    for cls in reversed(list(SOURCES.values())):
        source = cls.from_config(cfg, root)
        if source is not None:
            return source
    raise UserError(f"no data given; pass {LAYOUT}, or --dataset NAME --download")


@register_source
class FolderSource(Source):
    """``--data DIR``: ImageFolder splits ``DIR/<split>/<class>/<image>`` (SafeImageFolder).

    Args:
        root: the folder holding the split folders; it must exist.
        bad_images: ``skip`` (warn, substitute, count) or ``fail`` on unreadable files.
        cache_dir, use_cache: the in-memory cache of :meth:`load_uint8`
            (:func:`unigrad.data.inmemory.load_folder`).
    """

    kind = "folder"

    def __init__(
        self,
        root: str,
        bad_images: str = "skip",
        *,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> None:
        check_bad_images(bad_images)
        if not Path(root).is_dir():
            raise missing_folder_error(root)
        self.root, self.bad_images = str(root), bad_images
        self.cache_dir, self.use_cache = cache_dir, use_cache

    @classmethod
    def from_config(cls, cfg: Any, root: str = "data") -> Source | None:
        data = getattr(cfg, "data", None)
        if data is not None and Path(data).is_file():  # a mistake, not a missing folder
            raise missing_folder_error(data)
        if data is None or (getattr(cfg, "fallback_dataset", None) and not Path(data).is_dir()):
            return None  # no folder, or a missing one with a fallback (TorchvisionSource's)
        return cls(data, getattr(cfg, "bad_images", "skip"))

    def splits(self) -> tuple[str, ...]:
        return tuple(available_splits(self.root))

    def open(self, split: str, transform: Callable[[Any], Any] | None = None) -> SafeImageFolder:
        return SafeImageFolder(str(split_dir(self.root, split)), transform, self.bad_images)

    def image_sizes(self, ds: Any, n: int) -> Iterator[tuple[int, int]]:
        """Header reads of the first ``n`` files, unreadable ones left out."""
        for path, _ in ds.samples[:n]:
            try:
                with Image.open(path) as img:
                    size = (img.height, img.width)
            except DECODE_ERRORS:
                continue
            yield size

    def load_uint8(self, split: str, size: int | None = None) -> inmemory.Uint8Split:
        return inmemory.load_folder(self.open(split), size, self.cache_dir, self.use_cache)


@register_source
class TorchvisionSource(Source):
    """``--dataset cifar10|cifar100|stl10``: a torchvision set stored under ``root``.

    Its ``val`` and ``test`` splits are both the set's test split. :meth:`from_config` checks
    that the set is there (downloading it with ``--download``, or as ``fallback_dataset``).
    """

    kind = "torchvision"

    def __init__(self, name: str, root: str = "data", download: bool = False) -> None:
        if name not in TORCHVISION:
            raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(TORCHVISION)}")
        self.name, self.root, self.download = name, root, download

    @classmethod
    def from_config(cls, cfg: Any, root: str = "data") -> Source | None:
        data, name = getattr(cfg, "data", None), getattr(cfg, "dataset", None)
        fallback = getattr(cfg, "fallback_dataset", None)
        if data is None and name is not None:
            return cls.checked(name, root, bool(getattr(cfg, "download", False)))
        if fallback is None or (data is not None and Path(data).exists()):
            return None  # a folder, or a file (the folder source refuses it)
        if data is not None:
            warnings.warn(
                f"data folder {data} not found; using {fallback} under {root}/", stacklevel=3
            )
        return cls.checked(str(fallback), root, True)  # asking for a fallback asks for the download

    @classmethod
    def checked(cls, name: str, root: str, download: bool) -> TorchvisionSource:
        """The source once its train split opens (downloaded first with ``download``); a
        UserError that says what to pass otherwise."""
        source = cls(name, root, download)
        try:
            source.open("train")
        except UserError:
            raise UserError(
                f"{name} is not under {root}/; pass --dataset {name} --download to fetch it, "
                f"or {LAYOUT}"
            ) from None
        except Exception as e:  # network errors come as URLError, OSError, HTTPError, ...
            raise UserError(
                f"could not download {name} into {root}/ ({type(e).__name__}: {e}); without "
                f"network pass {LAYOUT}, or put the {name} files under {root}/ and pass "
                f"--dataset {name}"
            ) from None
        source.download = False  # it is there now
        return source

    def splits(self) -> tuple[str, ...]:
        return SPLITS

    def open(self, split: str, transform: Callable[[Any], Any] | None = None) -> Any:
        train = split == "train"
        rgb = to_rgb if transform is None else v2.Compose([to_rgb, transform])
        try:
            if self.name == "stl10":
                which = "train" if train else "test"
                return datasets.STL10(self.root, split=which, download=self.download, transform=rgb)
            cls = datasets.CIFAR10 if self.name == "cifar10" else datasets.CIFAR100
            return cls(self.root, train=train, download=self.download, transform=rgb)
        except RuntimeError as e:
            raise UserError(
                f"{self.name} not found under {self.root}/ ({e}); add --download"
            ) from None

    def image_sizes(self, ds: Any, n: int) -> Iterator[tuple[int, int]]:
        """One size for the whole array (STL-10: [N, 3, H, W], CIFAR: [N, H, W, 3])."""
        shape = np.asarray(ds.data).shape
        yield tuple(shape[-2:]) if self.name == "stl10" else tuple(shape[1:3])

    def load_uint8(self, split: str, size: int | None = None) -> inmemory.Uint8Split:
        ds = self.open(split)
        arr = torch.from_numpy(np.asarray(ds.data))
        images = arr if self.name == "stl10" else arr.permute(0, 3, 1, 2)
        labels = torch.as_tensor(np.asarray(ds.labels if self.name == "stl10" else ds.targets))
        n_resized = 0
        if size and tuple(images.shape[-2:]) != (size, size):
            images, n_resized = inmemory.common_size(list(images), size)
        return inmemory.Uint8Split(
            images.contiguous(), labels.long(), list(ds.classes), [], n_resized
        )
