"""Datasets passed to the Trainer from Python, as a :class:`~unigrad.data.sources.Source`.

``Trainer(cfg, train_data=ds, val_data=val)`` with map-style datasets whose items are ``img`` or
``(img, label)`` (img PIL or [3, H, W] uint8 / float in [0, 1]): they train through the
``standard`` pipeline and are evaluated like any source's splits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import Dataset

from unigrad.data.sources import Source, image_hw
from unigrad.errors import UserError


class ImageItems(Dataset):
    """A user's dataset whose items are ``img`` or ``(img, label, ...)`` -> ``(img, label)``
    (label -1 when absent). Images: PIL, or [3, H, W] uint8 / float (in [0, 1]) tensors."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        item = self.base[index]
        if isinstance(item, (tuple, list)):
            return item[0], (item[1] if len(item) > 1 else -1)
        return item, -1

    @property
    def classes(self) -> list[str] | None:
        """The user's class names (its ``classes``, as torchvision's datasets), else None."""
        return getattr(self.base, "classes", None)

    def labelled(self) -> bool:
        item = self.base[0]
        return isinstance(item, (tuple, list)) and len(item) > 1


class _Transformed(Dataset):
    def __init__(self, items: Dataset, transform: Callable[[Any], Any]) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, label = self.items[index]
        return self.transform(img), label


class DatasetSource(Source):
    """Datasets passed from Python, one per split name (``Trainer(train_data=, val_data=)``).

    Items ``img`` or ``(img, label)``, img PIL or [3, H, W] uint8 / float in [0, 1]
    (:class:`ImageItems`); the images are given as they are, not converted to PIL. The first
    image's size stands for all (:meth:`image_sizes`).
    """

    def __init__(self, splits: dict[str, Any]) -> None:
        self.items = {name: ImageItems(ds) for name, ds in splits.items()}

    @classmethod
    def checked(cls, train_data: Any, val_data: Any = None) -> DatasetSource:
        """Splits ``train`` and, when given, ``val``; a UserError for an empty ``train_data``
        or, with ``val_data``, unlabelled items (the kNN bank is ``train_data``)."""
        if len(train_data) == 0:
            raise UserError("train_data is empty; give it at least one batch of images")
        source = cls(
            {"train": train_data} if val_data is None else {"train": train_data, "val": val_data}
        )
        if val_data is not None and not all(source.labelled(s) for s in source.items):
            raise UserError(
                "val_data needs labels in both datasets (items (img, label)): the kNN bank is "
                "train_data; pass labelled datasets or leave val_data out"
            )
        return source

    def splits(self) -> tuple[str, ...]:
        return tuple(self.items)

    def open(self, split: str, transform: Callable[[Any], Any] | None = None) -> Dataset:
        if split not in self.items:
            raise UserError(f"no {split!r} data given (given: {', '.join(self.items)})")
        items = self.items[split]
        return items if transform is None else _Transformed(items, transform)

    def labelled(self, split: str) -> bool:
        return self.items[split].labelled()

    def image_sizes(self, ds: Any, n: int) -> Iterator[tuple[int, int]]:
        yield image_hw(ds[0][0])
