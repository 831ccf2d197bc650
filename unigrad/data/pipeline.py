"""Training data for the trainer: views per step, a fixed probe batch, and the kNN monitor.

Two pipelines with one interface (:class:`TrainData`):

* ``fast``: the split decoded once into a uint8 tensor [N, 3, H, W]; whole batches are
  augmented as tensors (:class:`unigrad.data.augment.FastAugment`) with a generator seeded by
  (seed, step, rank);
* ``standard``: torchvision per-image transforms in DataLoader workers, randomness a pure
  function of (seed, epoch, index).

Either way the sampler's permutation depends on (seed, epoch) only, so a run can restart at any
batch of an epoch and see exactly the views it would have seen.

Data passed from Python (``Trainer(cfg, train_data=...)``, :func:`build_train_data`): a Dataset
of images goes through the ``standard`` pipeline (:class:`UserData`); a DataLoader that yields
ready views is taken as given (:class:`GivenLoaderData`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from unigrad.config import Config
from unigrad.core import dist
from unigrad.data import augment, inmemory
from unigrad.data import datasets as data
from unigrad.errors import UserError


def step_generator(seed: int, step: int, salt: int = 0, per_rank: bool = True) -> torch.Generator:
    """A CPU generator whose state is a pure function of (seed, step, salt) and, if
    ``per_rank``, the rank."""
    rank = dist.rank() if per_rank else -1
    return torch.Generator().manual_seed(data.mix_seed(seed, step, rank, salt))


def has_split(source: dict[str, Any], split: str) -> bool:
    """Folders: the split's directory exists; torchvision sets: train and val/test exist."""
    if source["data"] is not None:
        return split in data.available_splits(source["data"])
    return split in ("train", "val", "test")


def normalize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation view of an in-memory split: [N, 3, H, W] uint8 -> normalised float, size^2."""
    x = images.float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    mean = torch.tensor(data.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.STD).view(1, 3, 1, 1)
    return (x - mean) / std


class TrainData:
    """Interface shared by the two pipelines."""

    steps_per_epoch: int
    n_views: int
    skipped: int = 0  # unreadable training images left out (bad_images=skip)

    def epoch(
        self, epoch: int, start: int, gen_for_step: Callable[[int], torch.Generator]
    ) -> Iterator[list[torch.Tensor]]:
        raise NotImplementedError

    def probe(self, n: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def eval_loaders(self) -> tuple[DataLoader, DataLoader] | None:
        """(train split, eval split) as deterministic evaluation views; None without eval split."""
        raise NotImplementedError

    @torch.no_grad()
    def features(self, backbone: nn.Module) -> tuple[torch.Tensor, ...] | None:
        """Backbone features of the train split (the kNN bank) and the eval split:
        (train_feats [N, D], train_labels [N], eval_feats [M, D], eval_labels [M])."""
        from unigrad.eval.features import extract_features

        loaders = self.eval_loaders()
        if loaders is None:
            return None
        was_training = backbone.training
        try:
            fb, lb = extract_features(backbone, loaders[0], self.device, progress=False)
            fq, lq = extract_features(backbone, loaders[1], self.device, progress=False)
        finally:
            backbone.train(was_training)
        return fb, lb, fq, lq


class FastData(TrainData):
    def __init__(self, cfg: Config, device: torch.device, source: dict[str, Any]) -> None:
        self.cfg, self.device = cfg, device
        split = inmemory.load_uint8(split=cfg.train_split, **source, bad_images=cfg.bad_images)
        self.images, self.labels, self.skipped = split.images, split.labels, split.n_skipped
        self.spec = augment.AugmentSpec.from_config(cfg)
        self.aug = augment.FastAugment(self.spec, channels_last=cfg.channels_last)
        self.n_views = len(self.spec.views())
        self.batch = cfg.batch_size
        self.steps_per_epoch = len(self.images) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(
                f"batch_size {cfg.batch_size} is larger than the training split "
                f"({len(self.images)} images); lower --batch-size"
            )
        self.source = source
        self._probe: list[torch.Tensor] | None = None

    def _views(self, x: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        part = (dist.rank(), dist.world_size())
        return self.aug(x.to(self.device, non_blocking=True), gen, part)

    def epoch(self, epoch, start, gen_for_step):
        sampler = data.EpochSampler(
            len(self.images),
            self.batch,
            self.cfg.seed,
            epoch,
            dist.rank(),
            dist.world_size(),
            start_batch=start,
        )
        for b, idx in enumerate(sampler, start):
            yield self._views(self.images[idx], gen_for_step(epoch * self.steps_per_epoch + b))

    def probe(self, n):
        if self._probe is None:
            g = torch.Generator().manual_seed(self.cfg.seed + 12345)
            self._probe = self._views(self.images[: min(n, len(self.images))], g)
        return self._probe

    def _eval_loader(self, images: torch.Tensor, labels: torch.Tensor) -> DataLoader:
        x = normalize_uint8(images, self.spec.image_size)
        return DataLoader(TensorDataset(x, labels), batch_size=512)

    def eval_loaders(self):
        if not has_split(self.source, self.cfg.eval_split):
            return None
        ev_x, ev_y, _ = inmemory.load_uint8(
            split=self.cfg.eval_split, **self.source, bad_images=self.cfg.bad_images
        )
        return self._eval_loader(self.images, self.labels), self._eval_loader(ev_x, ev_y)


class LoaderData(TrainData):
    def __init__(self, cfg: Config, device: torch.device, source: dict[str, Any]) -> None:
        base = data.open_split(split=cfg.train_split, **source, bad_images=cfg.bad_images)
        self._setup(cfg, device, source, base)

    def _setup(self, cfg: Config, device: torch.device, source: Any, base: Dataset) -> None:
        """Views of ``base``'s (image, label) items, per image in DataLoader workers."""
        self.cfg, self.device, self.source = cfg, device, source
        self.spec = augment.AugmentSpec.from_config(cfg)
        self.dataset = augment.ViewsDataset(base, self.spec, cfg.seed)
        self.n_views = len(self.spec.views())
        self.steps_per_epoch = len(self.dataset) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(
                f"batch_size {cfg.batch_size} is larger than the training split "
                f"({len(self.dataset)} images); lower --batch-size"
            )
        self._probe: list[torch.Tensor] | None = None

    def _loader(self, dataset: Any, **batching: Any) -> DataLoader:
        """``batching``: batch_sampler=... or batch_size=..."""
        return DataLoader(
            dataset, num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda", **batching
        )

    def _to_device(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        return [v.to(self.device, non_blocking=True, memory_format=fmt) for v in views]

    def epoch(self, epoch, start, gen_for_step):
        self.dataset.set_epoch(epoch)
        sampler = data.EpochSampler(
            len(self.dataset),
            self.cfg.batch_size,
            self.cfg.seed,
            epoch,
            dist.rank(),
            dist.world_size(),
            start_batch=start,
        )
        for views, _ in self._loader(self.dataset, batch_sampler=sampler):
            yield self._to_device(views)

    def probe(self, n):
        if self._probe is None:
            self.dataset.set_epoch(-1)
            n = min(n, len(self.dataset))
            views, _ = next(
                iter(self._loader(torch.utils.data.Subset(self.dataset, range(n)), batch_size=n))
            )
            self._probe = self._to_device(views)
        return self._probe

    def eval_loaders(self):
        if not has_split(self.source, self.cfg.eval_split):
            return None
        tf = data.eval_transform(self.spec.image_size)

        def loader(split: str) -> DataLoader:
            ds = data.open_split(
                split=split, **self.source, transform=tf, bad_images=self.cfg.bad_images
            )
            return self._loader(ds, batch_size=256)

        return loader(self.cfg.train_split), loader(self.cfg.eval_split)


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

    def labelled(self) -> bool:
        item = self.base[0]
        return isinstance(item, (tuple, list)) and len(item) > 1


class _Transformed(Dataset):
    def __init__(self, items: ImageItems, transform: Callable[[Any], torch.Tensor]) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        img, label = self.items[index]
        return self.transform(img), label


class UserData(LoaderData):
    """A Dataset of images passed from Python, augmented per image like the ``standard``
    pipeline (same recipe, same (seed, epoch, index) randomness, so resume is exact).

    Args:
        dataset: items ``img`` or ``(img, label)``; img PIL or [3, H, W] uint8 / float in [0, 1].
        val_data: an optional labelled dataset of the same kind for the kNN / linear evaluation
            (the bank is ``dataset``, which then needs labels); without it none is run.
    """

    def __init__(
        self, cfg: Config, device: torch.device, dataset: Any, val_data: Any = None
    ) -> None:
        if len(dataset) == 0:
            raise UserError("train_data is empty; give it at least one batch of images")
        self.items = ImageItems(dataset)
        self.val_items = None if val_data is None else ImageItems(val_data)
        if self.val_items is not None and not (self.items.labelled() and self.val_items.labelled()):
            raise UserError(
                "val_data needs labels in both datasets (items (img, label)): the kNN bank is "
                "train_data; pass labelled datasets or leave val_data out"
            )
        if cfg.image_size is None:
            img = self.items[0][0]
            h, w = (img.height, img.width) if hasattr(img, "height") else tuple(img.shape[-2:])
            _note_image_size(cfg, min(h, w, LARGE_IMAGE_SIZE), "the first image")
        self._setup(cfg, device, None, self.items)

    def eval_loaders(self):
        if self.val_items is None:
            return None
        tf = v2.Compose([v2.ToImage(), data.eval_transform(self.spec.image_size)])
        return tuple(
            self._loader(_Transformed(items, tf), batch_size=256)
            for items in (self.items, self.val_items)
        )


class GivenLoaderData(TrainData):
    """A DataLoader passed from Python, taken as given: one batch per step, in its order.

    Each batch must be the augmented views, ``[v_1, ..., v_n]`` or ``([v_1, ..., v_n], labels)``,
    every ``v_i`` a float [B, 3, H_i, W_i] tensor normalised as the model expects, global views
    first; n = the config's view count (2, or the sum of ``multi_crop``), B = the per-rank batch
    (``cfg.batch_size`` / world size; sharding over ranks is the loader's job). An epoch is
    ``len(loader)`` steps (use ``drop_last=True``). On a resume mid-epoch the loader's first
    batches of that epoch are drawn and dropped, so it continues exactly only when the loader's
    order is a function of the epoch (a sampler with ``set_epoch`` is called with it). The
    first batch is drawn once at construction, to check it (and read ``image_size`` when unset).
    No evaluation is run.
    """

    def __init__(self, cfg: Config, device: torch.device, loader: DataLoader) -> None:
        self.cfg, self.device, self.loader = cfg, device, loader
        self.n_views = len(augment.AugmentSpec.from_config(cfg).views())
        per_rank = cfg.batch_size // dist.world_size()
        if loader.batch_size is not None and loader.batch_size != per_rank:
            raise UserError(
                f"the DataLoader's batch_size {loader.batch_size} is not cfg.batch_size / world "
                f"size = {per_rank} (the lr scales with cfg.batch_size); make them equal"
            )
        self.steps_per_epoch = len(loader)
        if self.steps_per_epoch < 1:
            raise UserError("the DataLoader yields no batches; give it at least one batch")
        self._probe: list[torch.Tensor] | None = None
        first = self._check(next(iter(loader)))[0]  # refuse a wrong loader before training
        if cfg.image_size is None:
            _note_image_size(cfg, int(first.shape[-1]), "the first batch's views")

    def _views(self, batch: Any) -> list[torch.Tensor]:
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        return [v.to(self.device, non_blocking=True, memory_format=fmt) for v in self._check(batch)]

    def _check(self, batch: Any) -> list[torch.Tensor]:
        views = (
            batch[0]
            if isinstance(batch, (tuple, list)) and isinstance(batch[0], (list, tuple))
            else batch
        )
        ok = isinstance(views, (tuple, list)) and all(
            isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_floating_point() for v in views
        )
        if not ok or len(views) != self.n_views:
            raise UserError(
                f"a train_data DataLoader must yield the {self.n_views} augmented views of each "
                "batch, [v1, v2, ...] or ([v1, v2, ...], labels) with float [B, 3, H, W] views; "
                "pass the Dataset of images instead to have unigrad augment them"
            )
        return list(views)

    def epoch(self, epoch, start, gen_for_step):
        for holder in (self.loader.sampler, self.loader.batch_sampler):
            if hasattr(holder, "set_epoch"):
                holder.set_epoch(epoch)
        for b, batch in enumerate(self.loader):
            if b >= start:
                yield self._views(batch)

    def probe(self, n):
        if self._probe is None:
            self._probe = [v[:n] for v in self._views(next(iter(self.loader)))]
        return self._probe

    def eval_loaders(self):
        return None


#: image_size for data whose images are larger than this, or of varying size.
LARGE_IMAGE_SIZE = 224


def image_size_from_data(source: dict[str, Any], split: str, n_probe: int = 16) -> int:
    """The training side length the data suggests: the images' side when the first images
    (header reads) share one size of at most 224 px (CIFAR: 32, STL-10: 96), else 224."""
    from PIL import Image

    if source["data"] is None:
        _, h, w = inmemory.split_shape(split=split, **source)
        return min(h, w, LARGE_IMAGE_SIZE)
    folder = data.SafeImageFolder(str(data.split_dir(source["data"], split)))
    sizes = set()
    for p, _ in folder.samples[:n_probe]:
        try:
            with Image.open(p) as img:
                sizes.add((img.height, img.width))
        except data.DECODE_ERRORS:
            continue
    if len(sizes) != 1:
        return LARGE_IMAGE_SIZE
    return min(*sizes.pop(), LARGE_IMAGE_SIZE)


def _note_image_size(cfg: Config, size: int, where: str) -> None:
    cfg.image_size = size
    if dist.is_main():
        print(f"note: image_size {size} (from {where})", file=sys.stderr)


def build_train_data(
    cfg: Config, device: torch.device, train_data: Any = None, val_data: Any = None
) -> TrainData:
    """Pick the pipeline (``auto``: fast when the training split fits in memory); an unset
    ``cfg.image_size`` is set from the data here (:func:`image_size_from_data`).

    ``train_data`` (in place of ``cfg.data`` / ``cfg.dataset``): a Dataset of images
    (:class:`UserData`, with an optional labelled ``val_data`` for evaluation) or a DataLoader
    of ready views (:class:`GivenLoaderData`).
    """
    if train_data is not None:
        if cfg.data is not None or cfg.dataset is not None:
            raise UserError("pass either train_data or cfg.data / cfg.dataset, not both")
        if isinstance(train_data, DataLoader):
            if val_data is not None:
                raise UserError(
                    "val_data needs train_data as a labelled Dataset (the kNN bank), not a "
                    "DataLoader; pass the Dataset or leave val_data out"
                )
            given: TrainData = GivenLoaderData(cfg, device, train_data)
        elif hasattr(train_data, "__getitem__") and hasattr(train_data, "__len__"):
            given = UserData(cfg, device, train_data, val_data)
        else:
            raise UserError(
                f"train_data must be a map-style Dataset of images or a DataLoader of views, "
                f"got {type(train_data).__name__}"
            )
        if val_data is None and dist.is_main():
            print(
                "note: no kNN/linear evaluation: it needs labelled data; pass train_data as a "
                "labelled Dataset and val_data=<labelled Dataset> to get it",
                file=sys.stderr,
            )
        return given
    if val_data is not None:
        raise UserError("val_data goes with train_data; with cfg.data the eval split is its own")
    folder, name = data.resolve_source(cfg.data, cfg.dataset, cfg.fallback_dataset, cfg.download)
    source = {"data": folder, "dataset": name}
    if cfg.image_size is None:
        cfg.image_size = image_size_from_data(source, cfg.train_split)
        if dist.is_main():
            print(f"note: image_size {cfg.image_size} (from the data)", file=sys.stderr)
    pipeline = cfg.pipeline
    if pipeline == "auto":
        n, h, w = inmemory.split_shape(split=cfg.train_split, **source)
        pipeline = inmemory.choose_pipeline(pipeline, n, h, w)
    return (FastData if pipeline == "fast" else LoaderData)(cfg, device, source)
