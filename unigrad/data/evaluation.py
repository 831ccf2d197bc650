"""Evaluation data: a source's labelled train split (the kNN bank, the linear probe's training
set) and its eval split, seen through one deterministic view.

The view is :func:`eval_transform`: up to 64 px a resize to ``size`` x ``size``; above, the
shorter side resized to ``size * 256 / 224`` and a centre crop of ``size`` (the ImageNet
protocol); then normalised with MEAN/STD. The trainer's kNN monitor and final evaluation and
``unigrad knn|linear|semisup`` all take their features from :class:`EvalData`. In a distributed
run each rank extracts a shard of every split and the features are gathered (no rank waits
for another to extract a whole split); the in-training monitor may use a fixed subset
(``knn_subset``).

A split already decoded in memory (the fast pipeline's uint8 tensor) takes the same view as one
tensor (:func:`normalize_uint8`) where the view is a plain resize (up to 64 px), which spares
decoding the split again; above 64 px it is read per image like every other split.
"""

from __future__ import annotations

import weakref
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision.transforms import v2

from unigrad.core import dist
from unigrad.data.datasets import MEAN, STD, BadImages
from unigrad.data.inmemory import Uint8Split
from unigrad.data.sources import Source
from unigrad.errors import UserError

#: Up to this side the view is a plain resize, which in-memory splits take as whole tensors.
PLAIN_RESIZE_MAX = 64
#: Batch size over the views of an in-memory split (already computed, no workers).
MEMORY_BATCH = 512


def eval_transform(image_size: int) -> v2.Compose:
    """The evaluation view of one image (PIL, or [3, H, W] uint8 / float in [0, 1]) ->
    [3, image_size, image_size] normalised float: resize (+ centre crop above 64 px)."""
    ops: list[Any] = [v2.ToImage()]
    if image_size > PLAIN_RESIZE_MAX:
        ops += [v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
    else:
        ops += [v2.Resize((image_size, image_size), antialias=True)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(ops)


def normalize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """The evaluation view (up to 64 px) of a whole in-memory split: [N, 3, H, W] uint8 ->
    [N, 3, size, size] normalised float."""
    x = images.float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _first(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def check_same_classes(
    train: list[str] | None, held: list[str] | None, train_split: str, eval_split: str
) -> None:
    """Refuse two splits whose class lists differ: an ImageFolder numbers its own sorted class
    folders, so one folder missing or added shifts every label after it. A list that is None
    or empty (the source names no classes) is not checked."""
    if not train or not held or list(train) == list(held):
        return
    missing = sorted(set(train) - set(held))
    extra = sorted(set(held) - set(train))
    parts = [f"missing from {eval_split}: {_first(missing)}"] if missing else []
    parts += [f"only in {eval_split}: {_first(extra)}"] if extra else []
    what = "; ".join(parts) or "the same names in another order"
    raise UserError(
        f"the {train_split} and {eval_split} splits have different classes ({len(train)} vs "
        f"{len(held)}; {what}), so their labels would not match; give both splits the same "
        "class folders"
    )


def fixed_subset(ds: Dataset, limit: int) -> Dataset:
    """``limit`` > 0 items of ``ds`` evenly spaced over it (the same at every call; sorted
    folders give every class its share), or ``ds`` itself when it is not larger."""
    n = len(ds)  # type: ignore[arg-type]
    if limit <= 0 or n <= limit:
        return ds
    return Subset(ds, torch.linspace(0, n - 1, limit).round().long().tolist())


class EvalData:
    """A source's train split (the kNN bank) and eval split as evaluation views.

    Args:
        source: where the images come from; it must hold both splits.
        image_size: the view's side.
        train_split, eval_split: the labelled split and the split that is scored.
        memory: the train split already in memory (the fast pipeline's); up to 64 px both
            splits are then viewed as whole uint8 tensors (:meth:`Source.load_uint8`).
        batch_size, workers, pin_memory: DataLoader settings of the per-image splits.
    """

    def __init__(
        self,
        source: Source,
        image_size: int,
        *,
        train_split: str = "train",
        eval_split: str = "val",
        memory: Uint8Split | None = None,
        batch_size: int = 256,
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.source, self.image_size = source, image_size
        self.train_split, self.eval_split = train_split, eval_split
        self.memory = memory if image_size <= PLAIN_RESIZE_MAX else None
        self.batch_size, self.workers, self.pin_memory = batch_size, workers, pin_memory
        self._held: tuple[Any, tuple[torch.Tensor, torch.Tensor]] | None = None

    def datasets(self, train_transform: Any = None) -> tuple[Dataset, Dataset]:
        """(train split, eval split) of (view [3, S, S], label) items; ``train_transform``
        (e.g. the linear probe's augmentation) replaces the view of the train split."""
        if self.memory is not None and train_transform is None:
            return self.train_dataset(), self.held_dataset()
        view = eval_transform(self.image_size)
        train = self.source.open(self.train_split, train_transform or view)
        return train, self.held_dataset(in_memory=False)

    def train_dataset(self) -> Dataset:
        """The train split of (view [3, S, S], label) items (whole tensors when in memory)."""
        if self.memory is not None:
            images = normalize_uint8(self.memory.images, self.image_size)
            return TensorDataset(images, self.memory.labels)
        return self.source.open(self.train_split, eval_transform(self.image_size))

    def held_dataset(self, in_memory: bool = True) -> Dataset:
        """The eval split of (view [3, S, S], label) items (as whole tensors where the train
        split is in memory and ``in_memory``)."""
        if self.memory is not None and in_memory:
            held = self.source.load_uint8(self.eval_split)
            return TensorDataset(normalize_uint8(held.images, self.image_size), held.labels)
        return self.source.open(self.eval_split, eval_transform(self.image_size))

    def loader(self, ds: Dataset) -> DataLoader:
        """Batches of ``ds`` in order (a TensorDataset of in-memory views: in this process)."""
        if isinstance(getattr(ds, "dataset", ds), TensorDataset):
            return DataLoader(ds, batch_size=MEMORY_BATCH)
        return DataLoader(
            ds, batch_size=self.batch_size, num_workers=self.workers, pin_memory=self.pin_memory
        )

    def extract(
        self, backbone: nn.Module, ds: Dataset, device: torch.device, progress: bool | None = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, D] float32, labels [N] int64) of ``backbone`` in eval mode over ``ds``.

        In a distributed run every rank must call it: each extracts its strided shard
        (items rank, rank + W, ...) and all get the whole split in order
        (:func:`~unigrad.core.dist.gather_strided`)."""
        from unigrad.eval.features import extract_features

        n, rank, world = len(ds), dist.rank(), dist.world_size()  # type: ignore[arg-type]
        if world > 1:
            ds = Subset(ds, range(rank, n, world))
        feats, labels = extract_features(backbone, self.loader(ds), device, progress=progress)
        base = ds
        while hasattr(base, "dataset"):  # Subsets of a split
            base = base.dataset
        if isinstance(getattr(base, "bad", None), BadImages):
            base.bad.collect()  # the workers' unreadable files: one warning each
        return dist.gather_strided(feats, n), dist.gather_strided(labels, n)

    @torch.no_grad()
    def features(
        self,
        backbone: nn.Module,
        device: torch.device,
        progress: bool | None = False,
        limit: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train_feats [N, D], train_labels [N], eval_feats [M, D], eval_labels [M]), sharded
        over the ranks (every rank calls it; see :meth:`extract`). ``limit`` > 0: at most that
        many images of each split, a fixed subset (:func:`fixed_subset`); the full eval split's
        features are cached (:meth:`held_features`)."""
        train = fixed_subset(self.train_dataset(), limit)
        if limit:
            subset = fixed_subset(self.held_dataset(), limit)
            held = self.extract(backbone, subset, device, progress)
        else:
            held = self.held_features(backbone, device, progress)
        return (*self.extract(backbone, train, device, progress), *held)

    @torch.no_grad()
    def held_features(
        self, backbone: nn.Module, device: torch.device, progress: bool | None = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eval_feats [M, D], eval_labels [M]). The last result is kept and returned again
        while ``backbone`` is the same module with the same weights and buffers (their version
        counters, which every in-place change bumps; not one made through ``.data``), so the
        kNN monitor and the online probe of one epoch end extract the eval split once. The
        global RNG is left as it was (a DataLoader draws its base seed from it)."""
        ref = weakref.ref(backbone)
        versions = tuple(t._version for t in chain(backbone.parameters(), backbone.buffers()))
        held = self._held
        if held is not None and held[0][0]() is backbone and held[0][1] == versions:
            return held[1]
        with torch.random.fork_rng(devices=[]):  # whether cached or not, no global draw
            out = self.extract(backbone, self.held_dataset(), device, progress)
        self._held = ((ref, versions), out)
        return out
