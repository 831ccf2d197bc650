"""The ``standard`` pipeline on an image folder: workers cut uint8 crops, whole batches get
the rest of the recipe.

Per image, a worker draws every view's parameters from (seed, epoch, index)
(:func:`~unigrad.data.draws.sample_view_params`, the fast pipeline's sampler), reads the file
and decodes it at the smallest JPEG DCT scale (1/2, 1/4, 1/8: PIL's ``draft``) that still gives
each crop at least its output side in pixels, then cuts and resizes each crop (PIL, bilinear
with antialiasing, continuous box) into uint8 [3, s, s]. The rest of each view (flip, colour
jitter, grayscale, blur, solarize, normalisation) runs on the whole batch with the batched
kernels (:func:`~unigrad.data.batched.finish_view`): in the worker when training on the CPU, on
the device otherwise, so only uint8 crops cross to the GPU (pinned memory).

With ``raw`` (``decode: device``) a worker sends the file's bytes instead, and the batch is
decoded where it trains (:func:`torchvision.io.decode_jpeg` on a list, ``device="cuda"``) and
cropped there (``roi_align``, as the fast pipeline). Files that are not JPEG, or whose bytes do
not end in a JPEG end marker (truncated ones), are decoded by PIL in the worker and sent as
pixels, so unreadable files are met in the worker on both paths and skipped (or refused) as
:class:`~unigrad.data.datasets.SafeImageFolder` does: the next readable sample takes their place.

The views of sample ``i`` in epoch ``e`` depend on (seed, e, i) only, wherever they are made:
a run resumed mid-epoch sees exactly the views it would have seen.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from unigrad.data import kernels as K
from unigrad.data.batched import finish_view
from unigrad.data.datasets import (
    DECODE_ERRORS,
    SafeImageFolder,
    bad_image_error,
    load_rgb,
    mix_seed,
    to_rgb,
)
from unigrad.data.draws import ViewParams, sample_view_params
from unigrad.data.recipe import AugmentSpec
from unigrad.errors import UserError

#: JPEG end-of-image marker: raw bytes without it are decoded (and checked) in the worker.
JPEG_EOI = b"\xff\xd9"
#: Images finished at a time in a worker (the CPU's caches: ~10% faster than 32 at 224 px).
CHUNK = 8


def default_workers(workers: int | None) -> int:
    """``workers``, or when None the cores this process may run on, at most 8."""
    if workers is not None:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


def device_decode_available(device: torch.device) -> bool:
    """Whether torchvision decodes JPEGs on ``device`` (CUDA builds with nvjpeg)."""
    if device.type != "cuda":
        return False
    try:
        from torchvision.io import decode_jpeg

        probe = torch.frombuffer(bytearray(_tiny_jpeg()), dtype=torch.uint8)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            decode_jpeg([probe], device=device)
        return True
    except (ImportError, RuntimeError, TypeError):
        return False


def _tiny_jpeg() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def draw_params(
    spec: AugmentSpec, seed: int, epoch: int, index: int, height: int, width: int
) -> list[ViewParams]:
    """Every view's parameters for sample ``index`` (H x W) in ``epoch``: [1]-sized
    :class:`ViewParams`, a pure function of (seed, epoch, index) and the image size."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, index))
    return [sample_view_params(spec, v, 1, height, width, g) for v in spec.views()]


def cut_crops(img: Image.Image, params: list[ViewParams], sizes: list[int]) -> list[torch.Tensor]:
    """The crops of an opened (not yet loaded) image: decoded at the smallest JPEG scale that
    keeps every crop at least its output side, then each box resized (bilinear, antialiased)
    to s x s. Returns uint8 [3, s, s] per view."""
    width, height = img.size
    boxes = [p.boxes[0].tolist() for p in params]
    fold = min(min(x1 - x0, y1 - y0) / s for (x0, y0, x1, y1), s in zip(boxes, sizes, strict=True))
    if fold >= 2:  # DCT-domain downscaling (JPEG only; a no-op for other formats)
        img.draft("RGB", (math.ceil(width / fold), math.ceil(height / fold)))
    img.load()
    img = to_rgb(img)
    sx, sy = img.width / width, img.height / height
    out = []
    for (x0, y0, x1, y1), s in zip(boxes, sizes, strict=True):
        box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        crop = img.resize((s, s), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
        out.append(torch.from_numpy(np.array(crop)).permute(2, 0, 1))
    return out


class Item(NamedTuple):
    """One sample as a worker sends it: ``crops`` (uint8 [3, s, s] per view) or, raw, ``data``
    (the JPEG's bytes, uint8 [L]) or ``pixels`` (uint8 [3, H, W]); its parameters and label."""

    params: list[ViewParams]
    label: int
    crops: list[torch.Tensor] | None = None
    data: torch.Tensor | None = None
    pixels: torch.Tensor | None = None


class CropViews(Dataset):
    """A folder split as :class:`Item` s, keyed by (epoch, index) (a batch sampler of such keys:
    :class:`EpochKeys`).

    Args:
        folder: the split (its ``samples``, ``bad_images`` and per-process ``bad`` record).
        spec: the recipe.
        seed: the run's seed.
        raw: send JPEG bytes to be decoded where the batch trains, not crops.
    """

    def __init__(self, folder: SafeImageFolder, spec: AugmentSpec, seed: int, raw: bool = False):
        self.folder, self.spec, self.seed, self.raw = folder, spec, seed, raw
        self.sizes = [v.size for v in spec.views()]

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, key: tuple[int, int]) -> Item:
        epoch, index = (int(k) for k in key)
        f, n = self.folder, len(self.folder.samples)
        for k in range(n):
            path, label = f.samples[(index + k) % n]
            if path in f.bad:
                continue
            try:
                return self._read(path, label, epoch, index)
            except DECODE_ERRORS as e:
                if f.bad_images == "fail":
                    raise bad_image_error(path, e) from None
                f.bad.add(path, e)
        raise UserError(f"no readable image in {f.root}; check the files (e.g. open one)")

    def _read(self, path: str, label: int, epoch: int, index: int) -> Item:
        with open(path, "rb") as fh:
            if not self.raw:
                with Image.open(fh) as img:
                    p = draw_params(self.spec, self.seed, epoch, index, img.height, img.width)
                    return Item(p, label, crops=cut_crops(img, p, self.sizes))
            data = fh.read()
        with Image.open(path) as img:
            jpeg, (w, h) = img.format == "JPEG", img.size
        p = draw_params(self.spec, self.seed, epoch, index, h, w)
        if jpeg and data.endswith(JPEG_EOI):
            return Item(p, label, data=torch.frombuffer(bytearray(data), dtype=torch.uint8))
        pixels = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1)
        if tuple(pixels.shape[1:]) != (h, w):
            raise OSError(f"decoded size {tuple(pixels.shape[1:])} differs from the header's")
        return Item(p, label, pixels=pixels)


class CropBatch(NamedTuple):
    """A collated batch: ``views`` (finished float views, [B, 3, s, s] each) when the worker
    ran the whole recipe, else ``crops`` (uint8 [B, 3, s, s] per view) or the raw ``items``;
    ``params`` per view ([B]-sized) and ``labels`` [B] int64."""

    params: list[ViewParams]
    labels: torch.Tensor
    views: list[torch.Tensor] | None = None
    crops: list[torch.Tensor] | None = None
    items: list[Item] | None = None


class Collate:
    """The DataLoader's ``collate_fn``: :class:`Item` s -> :class:`CropBatch`; with ``finish``
    (training on the CPU) the batch's views are finished here, in the worker."""

    def __init__(self, spec: AugmentSpec, finish: bool, channels_last: bool = False) -> None:
        self.spec, self.finish, self.channels_last = spec, finish, channels_last

    def __call__(self, items: list[Item]) -> CropBatch:
        n_views = len(items[0].params)
        params = [ViewParams.cat([it.params[v] for it in items]) for v in range(n_views)]
        labels = torch.tensor([it.label for it in items], dtype=torch.int64)
        if items[0].crops is None:
            return CropBatch(params, labels, items=items)
        crops = [torch.stack([it.crops[v] for it in items]) for v in range(n_views)]
        if not self.finish:
            return CropBatch(params, labels, crops=crops)
        chunks = [  # a few images at a time: the intermediates stay in the CPU's caches
            finish_views(
                self.spec,
                [c[s : s + CHUNK] for c in crops],
                [p.map(lambda t, s=s: t[s : s + CHUNK]) for p in params],
                self.channels_last,
            )
            for s in range(0, len(items), CHUNK)
        ]
        views = [torch.cat(parts) for parts in zip(*chunks, strict=True)]
        return CropBatch(params, labels, views=views)


def finish_views(
    spec: AugmentSpec, crops: list[torch.Tensor], params: list[ViewParams], channels_last: bool
) -> list[torch.Tensor]:
    """uint8 (or [0, 1] float) crops [B, 3, s, s] per view -> the finished, normalised views."""
    return [
        finish_view(
            spec,
            c.float().div_(255) if c.dtype == torch.uint8 else c,
            p,
            channels_last,
            direct=True,
        )
        for c, p in zip(crops, params, strict=True)
    ]


def decode_and_crop(
    items: list[Item], params: list[ViewParams], sizes: list[int], device: torch.device
) -> list[torch.Tensor]:
    """Raw items -> float crops in [0, 1], [B, 3, s, s] per view, on ``device``: the JPEGs
    decoded there in one batched :func:`torchvision.io.decode_jpeg` call, the other images
    moved there, each view's box cut and resized with ``roi_align`` (the fast pipeline's crop)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [i for i, it in enumerate(items) if it.data is not None]
    images: list[Any] = [None] * len(items)
    if jpegs:
        data = [items[i].data for i in jpegs]
        with warnings.catch_warnings():  # deprecated for TorchCodec, which has no GPU batch
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        for i, img in zip(jpegs, decoded, strict=True):
            images[i] = img
    for i, it in enumerate(items):
        if it.pixels is not None:
            images[i] = it.pixels.to(device, non_blocking=True)
    out = []
    for p, s in zip(params, sizes, strict=True):
        rois = torch.cat((torch.zeros(len(items), 1), p.boxes), 1).to(device)
        crops = [
            K.crop_resize(x[None].float().div_(255), rois[i : i + 1], s)
            for i, x in enumerate(images)
        ]
        out.append(torch.cat(crops))
    return out


class EpochKeys:
    """A DataLoader ``batch_sampler`` over an :class:`~unigrad.data.datasets.EpochSampler`:
    its index batches as lists of (epoch, index) keys. The loader keeps this object, so
    ``sampler.set_epoch(epoch, start)`` before iterating reaches persistent workers."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch
        for idx in self.sampler:
            yield [(epoch, int(i)) for i in idx]
