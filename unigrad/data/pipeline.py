"""Training data for the trainer: augmented views per step and a fixed probe batch.

Three kinds, one interface (:class:`TrainData`):

* ``fast`` (:class:`FastData`): the training split decoded once into a uint8 tensor
  [N, 3, H, W] (:meth:`~unigrad.data.sources.Source.load_uint8`); whole batches are augmented
  as tensors (:class:`unigrad.data.batched.FastAugment`) with a generator seeded by
  (seed, step, rank);
* ``standard`` on an image folder (:class:`CropData`, :mod:`unigrad.data.crops`): persistent
  workers cut uint8 crops from a reduced JPEG decode, the rest of the recipe runs on whole
  batches (in the workers on the CPU, on the device otherwise; ``decode: device`` decodes
  the JPEGs on the GPU); randomness a pure function of (seed, epoch, index);
* ``standard`` on any other Dataset of (image, label) (:class:`LoaderData`: another source's
  split or a user's Dataset), augmented per image in DataLoader workers, randomness a pure
  function of (seed, epoch, index);
* a user's DataLoader of ready views (:class:`GivenLoaderData`), taken as given.

Every kind yields a :class:`Batch` per step: the views and, where the data has them, the
images' labels (the online probe's targets), so the labels cannot drift from the views they
belong to.

Either way the sampler's permutation depends on (seed, epoch) only, so a run can restart at any
batch of an epoch and see exactly the views it would have seen.

:func:`build_train_data` builds them from a config (its :class:`~unigrad.data.sources.Source`)
or from data passed from Python, together with the evaluation splits
(:class:`~unigrad.data.evaluation.EvalData`, kept apart from the training stream) and the
resolved ``image_size``; the config it is given is left as it is.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from unigrad.config import Config
from unigrad.core import dist
from unigrad.data import crops, inmemory
from unigrad.data import datasets as data
from unigrad.data.batched import FastAugment
from unigrad.data.evaluation import EvalData, check_same_classes
from unigrad.data.per_image import ViewsDataset
from unigrad.data.recipe import AugmentSpec
from unigrad.data.sources import Source, source_from_config
from unigrad.data.user_data import DatasetSource
from unigrad.engine.run_config import compile_backend
from unigrad.errors import UserError


class Batch(NamedTuple):
    """One step's data: ``views`` (global first, float [B, 3, H_i, W_i] each, on the device)
    and ``labels`` ([B] int64 on the device, the images' classes; None where the data has
    none)."""

    views: list[torch.Tensor]
    labels: torch.Tensor | None = None


def step_generator(
    seed: int,
    step: int,
    salt: int = 0,
    per_rank: bool = True,
    device: torch.device | str = "cpu",
) -> torch.Generator:
    """A generator on ``device`` whose state is a pure function of (seed, step, salt) and, if
    ``per_rank``, the rank (seeding a CUDA generator is a host-side operation: no sync)."""
    rank = dist.rank() if per_rank else -1
    return torch.Generator(device=device).manual_seed(data.mix_seed(seed, step, rank, salt))


class TrainData:
    """Training views per step and a fixed probe batch (evaluation is :class:`EvalData`'s).

    Args:
        cfg: the run's config, ``image_size`` resolved.
        device: where the views go.
    """

    steps_per_epoch: int
    skipped: int = 0  # unreadable training images left out (bad_images=skip)
    #: Whether the batches of :meth:`epoch` carry labels (:attr:`Batch.labels`).
    labelled: bool = True
    #: Classes of the training labels where the batches carry labels and a probe can be
    #: scored on them (a labelled eval split exists), else None; set by
    #: :func:`data_from_source`. The online probe is built only where it is set.
    num_classes: int | None = None
    #: Where the step's random draws are made (the generators the loop passes to :meth:`epoch`
    #: and CutMix): the training device for the fast pipeline on a GPU, else the CPU.
    draw_device: torch.device = torch.device("cpu")

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.spec = AugmentSpec.from_config(cfg)
        self.n_views = len(self.spec.views())
        self._probe: list[torch.Tensor] | None = None

    def augment_generator(self, step: int) -> torch.Generator:
        """The augmentation's generator of step ``step``: a function of (seed, step), the same
        on every rank (each rank applies its slice of the global batch's draws)."""
        return step_generator(self.cfg.seed, step, per_rank=False, device=self.draw_device)

    def cutmix_generator(self, step: int) -> torch.Generator:
        """CutMix's generator of step ``step``: a function of (seed, step, rank)."""
        return step_generator(self.cfg.seed, step, salt=1, device=self.draw_device)

    def epoch(
        self,
        epoch: int,
        start: int,
        gen_for_step: Callable[[int], torch.Generator] | None = None,
    ) -> Iterator[Batch]:
        """The batches of each step of ``epoch`` from its batch ``start`` on: views
        [B, 3, H_i, W_i] float on the device, global views first, with their labels where
        :attr:`labelled`. ``gen_for_step`` (default :meth:`augment_generator`) gives the
        generator of a step, where the views draw from one."""
        raise NotImplementedError

    def probe(self, n: int) -> list[torch.Tensor]:
        """The views of a fixed batch of (at most) ``n`` images, the same at every call."""
        if self._probe is None:
            self._probe = self._make_probe(n)
        return self._probe

    def _make_probe(self, n: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def _steps(self, n: int) -> int:
        """Steps per epoch over ``n`` training images (at least one batch)."""
        if n < self.cfg.batch_size:
            raise UserError(
                f"batch_size {self.cfg.batch_size} is larger than the training split "
                f"({n} images); lower --batch-size"
            )
        return n // self.cfg.batch_size

    def _sampler(
        self, n: int, epoch: int, start: int, device: torch.device | None = None
    ) -> data.EpochSampler:
        c = self.cfg
        world = (dist.rank(), dist.world_size())
        return data.EpochSampler(
            n, c.batch_size, c.seed, epoch, *world, start_batch=start, device=device
        )

    def _labels(self, labels: Any) -> torch.Tensor | None:
        """A batch's labels as [B] int64 on the device (None where the data has none)."""
        if not self.labelled or labels is None:
            return None
        return torch.as_tensor(labels, dtype=torch.int64).to(self.device, non_blocking=True)

    def _to_device(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        return [v.to(self.device, non_blocking=True, memory_format=fmt) for v in views]


class FastData(TrainData):
    """``fast``: the training split in memory (``split.images`` [N, 3, H, W] uint8), whole
    batches augmented on the device.

    On a GPU the random draws are made there (``draw_device``; the loop's (seed, step)
    generators live on the device) and applied masked, and where the uint8 split fits (a
    quarter of the free memory) it lives there with its labels and each epoch's permutation:
    a step then copies nothing from the host and waits on nothing. On the CPU the draws come
    from CPU generators, applied to the selected rows only. ``device_draws`` forces the GPU's
    way on any device (None: on a GPU only), so a CPU test reaches it. With ``compile: step``
    (or ``auto``) on a GPU the masked ops run as one compiled function (one graph per batch shape).
    """

    def __init__(
        self,
        cfg: Config,
        device: torch.device,
        split: inmemory.Uint8Split,
        device_draws: bool | None = None,
    ) -> None:
        super().__init__(cfg, device)
        self.images, self.labels, self.skipped = split.images, split.labels, split.n_skipped
        if device_draws is None:
            device_draws = device.type != "cpu"
        if device.type == "cuda" and self.images.numel() < torch.cuda.mem_get_info(device)[0] // 4:
            self.images, self.labels = self.images.to(device), self.labels.to(device)
        if device_draws:
            self.draw_device = device
        # compile: step (auto is step on a GPU) compiles the masked ops there too
        compiled = device_draws and device.type == "cuda" and cfg.compile in ("step", "auto")
        self.aug = FastAugment(
            self.spec,
            channels_last=cfg.channels_last,
            device_draws=device_draws,
            compile_backend=compile_backend() if compiled else None,
        )
        self.steps_per_epoch = self._steps(len(self.images))

    def _views(self, x: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        part = (dist.rank(), dist.world_size())
        return self.aug(x.to(self.device, non_blocking=True), gen, part)

    def epoch(self, epoch, start, gen_for_step=None):
        gen_for_step = gen_for_step or self.augment_generator
        # indices where the split is: on the device, one copy of the permutation per epoch
        sampler = self._sampler(len(self.images), epoch, start, self.images.device)
        for b, idx in enumerate(sampler, start):
            views = self._views(self.images[idx], gen_for_step(epoch * self.steps_per_epoch + b))
            yield Batch(views, self.labels[idx].to(self.device, non_blocking=True))

    def _make_probe(self, n):
        g = torch.Generator(device=self.draw_device).manual_seed(self.cfg.seed + 12345)
        return self._views(self.images[: min(n, len(self.images))], g)


class LoaderData(TrainData):
    """``standard``: views of ``base``'s (image, label) items, per image in DataLoader workers
    (a user's Dataset: the same recipe and (seed, epoch, index) randomness, so resume is exact)."""

    def __init__(self, cfg: Config, device: torch.device, base: Dataset) -> None:
        super().__init__(cfg, device)
        self.dataset = ViewsDataset(base, self.spec, cfg.seed)
        self.steps_per_epoch = self._steps(len(self.dataset))

    def _loader(self, dataset: Any, **batching: Any) -> DataLoader:
        """``batching``: batch_sampler=... or batch_size=..."""
        return DataLoader(
            dataset,
            num_workers=crops.default_workers(self.cfg.workers),
            pin_memory=self.device.type == "cuda",
            **batching,
        )

    def epoch(self, epoch, start, gen_for_step=None):
        self.dataset.set_epoch(epoch)
        sampler = self._sampler(len(self.dataset), epoch, start)
        for views, labels in self._loader(self.dataset, batch_sampler=sampler):
            yield Batch(self._to_device(views), self._labels(labels))

    def _make_probe(self, n):
        self.dataset.set_epoch(-1)
        n = min(n, len(self.dataset))
        subset = torch.utils.data.Subset(self.dataset, range(n))
        views, _ = next(iter(self._loader(subset, batch_size=n)))
        return self._to_device(views)


class CropData(TrainData):
    """``standard`` on an image folder (:mod:`unigrad.data.crops`): persistent workers read,
    decode (at a reduced JPEG scale where the crops allow) and cut uint8 crops; the rest of
    the recipe runs on whole batches, in the workers on the CPU, on the device otherwise.
    With ``decode: device`` (auto: on CUDA, where torchvision can) the workers send JPEG
    bytes, decoded and cropped on the device. Views depend on (seed, epoch, index) only."""

    def __init__(self, cfg: Config, device: torch.device, folder: data.SafeImageFolder) -> None:
        super().__init__(cfg, device)
        raw = cfg.decode == "device" or (
            cfg.decode == "auto" and crops.device_decode_available(device)
        )
        self.dataset = crops.CropViews(folder, self.spec, cfg.seed, raw=raw)
        on_cpu = device.type == "cpu"
        self.collate = crops.Collate(self.spec, finish=on_cpu and not raw)
        self.steps_per_epoch = self._steps(len(self.dataset))
        self.keys = crops.EpochKeys(self._sampler(len(self.dataset), 0, 0))
        self.workers = crops.default_workers(cfg.workers)
        self.loader: DataLoader | None = None  # built at the first epoch, kept (persistent)

    @property
    def skipped(self) -> int:  # type: ignore[override]
        """Unreadable training images met so far (by the workers too): files are decoded as
        the epochs reach them."""
        return len(self.dataset.folder.bad)

    def _views(self, batch: crops.CropBatch) -> list[torch.Tensor]:
        """A collated batch -> the finished views on the device."""
        if batch.views is not None:
            return self._to_device(batch.views)
        if batch.crops is not None:
            x = [c.to(self.device, non_blocking=True) for c in batch.crops]
        else:
            x = crops.decode_and_crop(batch.items, batch.params, self.dataset.sizes, self.device)
        return crops.finish_views(self.spec, x, batch.params, self.cfg.channels_last)

    def epoch(self, epoch, start, gen_for_step=None):
        self.keys.sampler.set_epoch(epoch, start)
        if self.loader is None:
            self.loader = DataLoader(
                self.dataset,
                batch_sampler=self.keys,
                collate_fn=self.collate,
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                pin_memory=self.device.type == "cuda",
            )
        for batch in self.loader:
            yield Batch(self._views(batch), self._labels(batch.labels))

    def _make_probe(self, n):
        n = min(n, len(self.dataset))
        return self._views(self.collate([self.dataset[(-1, i)] for i in range(n)]))


class GivenLoaderData(TrainData):
    """A DataLoader passed from Python, taken as given: one batch per step, in its order.

    Each batch must be the augmented views, ``[v_1, ..., v_n]`` or ``([v_1, ..., v_n], labels)``,
    every ``v_i`` a float [B, 3, H_i, W_i] tensor normalised as the model expects, global views
    first; n = the config's view count (2, or the sum of ``multi_crop``), B = the per-rank batch
    (``cfg.batch_size`` / world size; sharding over ranks is the loader's job). An epoch is
    ``len(loader)`` steps (use ``drop_last=True``). On a resume mid-epoch the loader's first
    batches of that epoch are drawn and dropped, so it continues exactly only when the loader's
    order is a function of the epoch (a sampler with ``set_epoch`` is called with it). The
    first batch is drawn once at construction, to check it; its first view's side is
    ``image_size`` (the size the data suggests). The batches' labels, where the loader yields
    them, travel with the views (:class:`Batch`); no evaluation is run, so no online probe.
    """

    def __init__(self, cfg: Config, device: torch.device, loader: DataLoader) -> None:
        super().__init__(cfg, device)
        self.loader = loader
        per_rank = cfg.batch_size // dist.world_size()
        if loader.batch_size is not None and loader.batch_size != per_rank:
            raise UserError(
                f"the DataLoader's batch_size {loader.batch_size} is not cfg.batch_size / world "
                f"size = {per_rank} (the lr scales with cfg.batch_size); make them equal"
            )
        self.steps_per_epoch = len(loader)
        if self.steps_per_epoch < 1:
            raise UserError("the DataLoader yields no batches; give it at least one batch")
        views, labels = self._split(next(iter(loader)))  # refuse a wrong loader before training
        self.image_size = int(views[0].shape[-1])
        self.labelled = labels is not None

    def _split(self, batch: Any) -> tuple[list[torch.Tensor], Any]:
        """A loader's batch -> (its views, its labels or None), checked."""
        views, labels = batch, None
        if isinstance(batch, (tuple, list)) and isinstance(batch[0], (list, tuple)):
            views, labels = batch[0], (batch[1] if len(batch) > 1 else None)
        ok = isinstance(views, (tuple, list)) and all(
            isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_floating_point() for v in views
        )
        if not ok or len(views) != self.n_views:
            raise UserError(
                f"a train_data DataLoader must yield the {self.n_views} augmented views of each "
                "batch, [v1, v2, ...] or ([v1, v2, ...], labels) with float [B, 3, H, W] views; "
                "pass the Dataset of images instead to have unigrad augment them"
            )
        if labels is not None:
            shape = tuple(getattr(labels, "shape", (len(labels),)))
            if shape != (views[0].shape[0],):
                raise UserError(
                    f"a train_data DataLoader's labels must be one class index per image "
                    f"([{views[0].shape[0]}]), got shape {list(shape)}; yield "
                    "([v1, v2, ...], labels) with labels [B]"
                )
        return list(views), labels

    def epoch(self, epoch, start, gen_for_step=None):
        for holder in (self.loader.sampler, self.loader.batch_sampler):
            if hasattr(holder, "set_epoch"):
                holder.set_epoch(epoch)
        for b, batch in enumerate(self.loader):
            if b >= start:
                views, labels = self._split(batch)
                yield Batch(self._to_device(views), self._labels(labels))

    def _make_probe(self, n):
        return [v[:n] for v in self._to_device(self._split(next(iter(self.loader)))[0])]


class RunData(NamedTuple):
    """What :func:`build_train_data` builds: the training stream, the evaluation splits (None
    without an eval split or without labelled data) and the run's ``image_size`` (the
    config's, or the size the data suggests when it is None)."""

    train: TrainData
    eval: EvalData | None
    image_size: int


def _note_upsampling(cfg: Config, source: Source, split: str, n_probe: int = 16) -> None:
    """One note when the configured ``image_size`` is above the images' size (the shorter side
    of the first ``n_probe``): every view would then be upsampled."""
    sides = [min(hw) for hw in source.image_sizes(source.open(split), n_probe)]
    if sides and cfg.image_size is not None and cfg.image_size > max(sides) and dist.is_main():
        print(
            f"note: image_size {cfg.image_size} is above the images' size ({max(sides)} px): "
            f"every view is upsampled; set image_size {max(sides)} or less unless you mean it",
            file=sys.stderr,
        )


def _resolved_size(cfg: Config, suggested: Callable[[], int], where: str) -> int:
    if cfg.image_size is not None:
        return cfg.image_size
    size = suggested()
    if dist.is_main():
        print(f"note: image_size {size} (from {where})", file=sys.stderr)
    return size


def data_from_source(
    cfg: Config,
    device: torch.device,
    source: Source,
    *,
    pipeline: str | None = None,
    splits: tuple[str, str] | None = None,
    where: str = "the data",
) -> RunData:
    """Training data and evaluation splits of ``source``.

    Args:
        pipeline: fast | standard | auto (default: ``cfg.pipeline``; auto: fast when the
            training split fits in memory).
        splits: (train split, eval split); default ``cfg.train_split``, ``cfg.eval_split``.
        where: what an unset ``image_size`` is read from, for the note on stderr.
    """
    train_split, eval_split = splits or (cfg.train_split, cfg.eval_split)
    size = _resolved_size(cfg, lambda: source.image_side(train_split), where)
    _note_upsampling(cfg, source, train_split)
    cfg = copy.copy(cfg)  # the views' size; the caller's config is left as it is
    cfg.image_size = size
    pipeline = pipeline or cfg.pipeline
    if pipeline == "auto":
        pipeline = inmemory.choose_pipeline(pipeline, *source.shape(train_split))
    memory = source.load_uint8(train_split) if pipeline == "fast" else None
    if memory is not None:
        train: TrainData = FastData(cfg, device, memory)
        classes = memory.classes
    else:
        base = source.open(train_split)
        folder = isinstance(base, data.SafeImageFolder)
        train = CropData(cfg, device, base) if folder else LoaderData(cfg, device, base)
        classes = getattr(base, "classes", None)
    train.labelled = source.labelled(train_split)
    evaluation = None
    if source.has_split(eval_split):
        check_same_classes(classes, source.classes(eval_split), train_split, eval_split)
        if train.labelled and classes:  # the online probe's: it trains on the batches' labels
            train.num_classes = len(classes)
        splits = {"train_split": train_split, "eval_split": eval_split}
        cuda = device.type == "cuda"
        workers = crops.default_workers(cfg.workers)
        evaluation = EvalData(
            source, size, **splits, memory=memory, workers=workers, pin_memory=cuda
        )
    return RunData(train, evaluation, size)


def _user_data(cfg: Config, device: torch.device, train_data: Any, val_data: Any) -> RunData:
    """``Trainer(train_data=, val_data=)``: a DataLoader of views, or Datasets of images."""
    if isinstance(train_data, DataLoader):
        if val_data is not None:
            raise UserError(
                "val_data needs train_data as a labelled Dataset (the kNN bank), not a "
                "DataLoader; pass the Dataset or leave val_data out"
            )
        given = GivenLoaderData(cfg, device, train_data)
        size = _resolved_size(cfg, lambda: given.image_size, "the first batch's views")
        return RunData(given, None, size)
    if not (hasattr(train_data, "__getitem__") and hasattr(train_data, "__len__")):
        raise UserError(
            f"train_data must be a map-style Dataset of images or a DataLoader of views, "
            f"got {type(train_data).__name__}"
        )
    source = DatasetSource.checked(train_data, val_data)
    return data_from_source(
        cfg, device, source, pipeline="standard", splits=("train", "val"), where="the first image"
    )


def build_train_data(
    cfg: Config, device: torch.device, train_data: Any = None, val_data: Any = None
) -> RunData:
    """The run's data from ``cfg``'s source (:func:`~unigrad.data.sources.source_from_config`)
    or, in its place, from ``train_data``: a Dataset of images (with an optional labelled
    ``val_data`` for evaluation) or a DataLoader of ready views (:class:`GivenLoaderData`).
    ``cfg`` is not changed: an unset ``image_size`` is resolved in the returned
    :class:`RunData`."""
    if train_data is None:
        if val_data is not None:
            raise UserError(
                "val_data goes with train_data; with cfg.data the eval split is its own"
            )
        return data_from_source(cfg, device, source_from_config(cfg))
    if cfg.data is not None or cfg.dataset is not None:
        raise UserError("pass either train_data or cfg.data / cfg.dataset, not both")
    out = _user_data(cfg, device, train_data, val_data)
    if val_data is None and dist.is_main():
        print(
            "note: no kNN/linear evaluation: it needs labelled data; pass train_data as a "
            "labelled Dataset and val_data=<labelled Dataset> to get it",
            file=sys.stderr,
        )
    return out
