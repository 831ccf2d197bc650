"""Augmentation: the BYOL/SimSiam recipe as two pipelines with the same distribution.

Per view, in this order: random resized crop (scale range per view, aspect 3/4-4/3), horizontal
flip (p 0.5), colour jitter (brightness/contrast/saturation/hue in a random order per sample, as
torchvision's ColorJitter, applied with ``jitter_p``), grayscale (``gray_p``), Gaussian blur
(kernel ~10% of the view, sigma 0.1-2, ``blur_p``), solarize (threshold 0.5, ``solarize_p``),
normalise with MEAN/STD. Views come global first, then local (multi-crop).

- standard: :class:`ViewsDataset`, torchvision ``transforms.v2`` per image in DataLoader
  workers (any image size); the randomness of sample ``i`` is a pure function of
  (seed, epoch, i), so a resumed run redraws the same views without saving RNG states.
- fast: :class:`FastAugment`, whole uint8 batches as tensors (in-memory data), every random
  number drawn from an explicit CPU ``torch.Generator``; crops through one ``roi_align`` call.

The fast pipeline's crop boxes are continuous (no rounding to whole pixels), otherwise its
parameters follow torchvision's sampling step by step (10 crop trials then a centre crop, the
same factor ranges, a uniform random order of the four jitter ops); :func:`sampled_params`
exposes both pipelines' draws so a test can compare them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from unigrad.data import kernels as K
from unigrad.data.datasets import MEAN, STD, mix_seed
from unigrad.errors import UserError

ASPECT = (3 / 4, 4 / 3)
SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 0.5


@dataclass(frozen=True)
class ViewSpec:
    """One view: output side in pixels and the crop's area fraction range."""

    size: int
    scale: tuple[float, float]


def parse_multi_crop(text: str) -> list[tuple[int, int]]:
    """``"2x32,6x16"`` -> [(2, 32), (6, 16)]: (count, size) of the global, then local views."""
    groups = []
    for part in text.replace(" ", "").split(","):
        count, sep, size = part.partition("x")
        if not (sep and count.isdigit() and size.isdigit() and int(count) and int(size)):
            groups = []
            break
        groups.append((int(count), int(size)))
    if not 1 <= len(groups) <= 2 or groups[0][0] < 2:
        raise UserError(
            f"multi_crop must look like '2x224,6x96' (global views x size, then local views x "
            f"size; at least 2 global views), got {text!r}"
        )
    return groups


@dataclass(frozen=True)
class AugmentSpec:
    """The augmentation recipe; field names are the config keys (``n_global``: 4 for asym2x)."""

    image_size: int = 224
    crop_scale_min: float = 0.2
    crop_scale_max: float = 1.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    solarize_p: float = 0.0
    multi_crop: str = ""
    local_scale_min: float = 0.05
    local_scale_max: float = 0.4
    n_global: int = 2

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentSpec:
        """From a :class:`unigrad.config.Config` (or any object with these attributes)."""
        kw = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        if getattr(cfg, "symmetry", "sym") == "asym2x":
            kw["n_global"] = 4
        return cls(**kw)

    def views(self) -> list[ViewSpec]:
        """Global views first, then local ones."""
        global_scale = (self.crop_scale_min, self.crop_scale_max)
        if not self.multi_crop:
            return [ViewSpec(self.image_size, global_scale)] * self.n_global
        groups = parse_multi_crop(self.multi_crop)
        out = [ViewSpec(groups[0][1], global_scale)] * groups[0][0]
        if len(groups) == 2:
            local = (self.local_scale_min, self.local_scale_max)
            out += [ViewSpec(groups[1][1], local)] * groups[1][0]
        return out

    def jitter_ranges(self) -> list[tuple[float, float]]:
        """(low, high) of the brightness, contrast, saturation, hue factors (torchvision's)."""
        b, c, s = self.brightness, self.contrast, self.saturation
        return [(max(0.0, 1 - f), 1 + f) for f in (b, c, s)] + [(-self.hue, self.hue)]


# --- fast: whole batches --------------------------------------------------------------------


@dataclass
class ViewParams:
    """One view's random parameters for N images (CPU tensors).

    Attributes:
        boxes: [N, 4] crop (x0, y0, x1, y1) in source pixels.
        flip, jitter, gray, blur, solarize: [N] bool, whether each op applies.
        factors: [N, 4] brightness, contrast, saturation, hue factors.
        order: [N, 4] long, the jitter ops' order (a permutation of 0..3 per sample).
        sigma: [N] blur sigma.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


def sample_view_params(
    spec: AugmentSpec, view: ViewSpec, n: int, height: int, width: int, g: torch.Generator
) -> ViewParams:
    """Draw one view's parameters for N images of H x W, the fast pipeline's way."""
    trials, area = 10, height * width
    scale = torch.empty(n, trials).uniform_(*view.scale, generator=g) * area
    ratio = torch.empty(n, trials).uniform_(*[math.log(a) for a in ASPECT], generator=g).exp()
    w, h = (scale * ratio).sqrt(), (scale / ratio).sqrt()
    ok = (w <= width) & (h <= height)
    first = ok.int().argmax(1, keepdim=True)  # torchvision: the first trial that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # none of the trials fits: torchvision's centre crop with the aspect clamped to ASPECT
    in_ratio = width / height
    fw = width if in_ratio <= ASPECT[1] else height * ASPECT[1]
    fh = height if in_ratio >= ASPECT[0] else width / ASPECT[0]
    w, h = torch.where(ok.any(1), w, fw), torch.where(ok.any(1), h, fh)
    x0 = torch.rand(n, generator=g) * (width - w)
    y0 = torch.rand(n, generator=g) * (height - h)
    lo, hi = torch.tensor(spec.jitter_ranges()).T
    return ViewParams(
        boxes=torch.stack((x0, y0, x0 + w, y0 + h), 1),
        flip=torch.rand(n, generator=g) < 0.5,
        jitter=torch.rand(n, generator=g) < spec.jitter_p,
        factors=lo + (hi - lo) * torch.rand(n, 4, generator=g),
        order=torch.rand(n, 4, generator=g).argsort(1),
        gray=torch.rand(n, generator=g) < spec.gray_p,
        blur=torch.rand(n, generator=g) < spec.blur_p,
        sigma=torch.empty(n).uniform_(*SIGMA, generator=g),
        solarize=torch.rand(n, generator=g) < spec.solarize_p,
    )


def _apply(x: torch.Tensor, mask: torch.Tensor, fn: Any, *args: torch.Tensor) -> torch.Tensor:
    """x[mask] = fn(x[mask], *args[mask]); masks live on the CPU, so no device sync."""
    idx = mask.nonzero()[:, 0]
    if idx.numel() == len(mask):
        return fn(x, *(a.to(x.device, non_blocking=True) for a in args))
    if idx.numel():
        on = idx.to(x.device, non_blocking=True)
        x[on] = fn(x[on], *(a[idx].to(x.device, non_blocking=True) for a in args))
    return x


def apply_view(
    spec: AugmentSpec, x: torch.Tensor, p: ViewParams, size: int, channels_last: bool = False
) -> torch.Tensor:
    """One view of a batch: x [N, 3, H, W] float in [0, 1] -> [N, 3, size, size] normalised."""
    n = x.shape[0]
    rois = torch.cat((torch.arange(n, dtype=p.boxes.dtype)[:, None], p.boxes), 1)
    v = K.crop_resize(x, rois.to(x.device, non_blocking=True), size)
    v = _apply(v, p.flip, lambda t: t.flip(-1))
    identity = [lo == hi for lo, hi in spec.jitter_ranges()]  # torchvision skips these ops
    for k in range(4):
        for op, fn in enumerate(K.JITTER_OPS):
            if not identity[op]:
                v = _apply(v, p.jitter & (p.order[:, k] == op), fn, p.factors[:, op])
    v = _apply(v, p.gray, lambda t: K.grayscale(t).repeat(1, 3, 1, 1))
    ksize = K.blur_kernel_size(size)
    v = _apply(v, p.blur, lambda t, s: K.gaussian_blur(t, s, ksize), p.sigma)
    v = _apply(v, p.solarize, lambda t: K.solarize(t, SOLARIZE_THRESHOLD))
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    v = (v - mean) / std
    return v.contiguous(memory_format=torch.channels_last) if channels_last else v


class FastAugment:
    """Views of in-memory uint8 batches as whole-batch tensor ops.

    On the CPU the batch runs with ``cpu_threads`` intra-op threads (default 1): its many small
    kernels gain little from more, and lose badly when the cores are shared (2-core machine under
    load, 2 views of 32 px: ~8,000 img/s with one thread, ~200 with two, as OpenMP threads
    spin-wait between the small kernels).

    Args:
        spec: the recipe.
        channels_last: return views in channels_last memory format.
        cpu_threads: intra-op threads for CPU batches (None: leave torch's setting).
    """

    def __init__(
        self, spec: AugmentSpec, channels_last: bool = False, cpu_threads: int | None = 1
    ) -> None:
        self.spec, self.views, self.channels_last = spec, spec.views(), channels_last
        self.cpu_threads = cpu_threads

    def sample(self, n: int, height: int, width: int, g: torch.Generator) -> list[ViewParams]:
        if g.device.type != "cpu":
            raise ValueError("FastAugment draws its parameters from a CPU torch.Generator")
        return [sample_view_params(self.spec, v, n, height, width, g) for v in self.views]

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, part: tuple[int, int] = (0, 1)
    ) -> list[torch.Tensor]:
        """images: [N, 3, H, W] uint8 on any device -> views [N, 3, s, s] float32 there.

        ``part`` = (rank, world_size): the parameters are drawn for the whole global batch of
        N * world_size images (same generator state on every rank) and this rank applies its
        slice, so a distributed run sees exactly the views of a single-process run.
        """
        n, _, h, w = images.shape
        rank, world = part
        threads = torch.get_num_threads()
        if images.device.type == "cpu" and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        try:
            params = self.sample(n * world, h, w, generator)
            if world > 1:
                rows = slice(rank * n, (rank + 1) * n)
                params = [
                    ViewParams(**{f.name: getattr(p, f.name)[rows] for f in fields(p)})
                    for p in params
                ]
            x = images.float().div_(255)
            return [
                apply_view(self.spec, x, p, v.size, self.channels_last)
                for p, v in zip(params, self.views, strict=True)
            ]
        finally:
            torch.set_num_threads(threads)


# --- standard: torchvision per image ----------------------------------------------------------


def standard_view(spec: AugmentSpec, view: ViewSpec) -> v2.Compose:
    """The torchvision v2 transform of one view: PIL or [3, H, W] uint8 -> normalised float."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(view.size, scale=view.scale, ratio=ASPECT, antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply(
                [v2.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)],
                p=spec.jitter_p,
            ),
            v2.RandomGrayscale(spec.gray_p),
            v2.RandomApply(
                [v2.GaussianBlur(K.blur_kernel_size(view.size), sigma=SIGMA)], p=spec.blur_p
            ),
            v2.RandomSolarize(SOLARIZE_THRESHOLD, p=spec.solarize_p),
            v2.Normalize(MEAN, STD),
        ]
    )


class ViewsDataset(Dataset):
    """(image, label) dataset -> (list of view tensors [3, s, s], label).

    The views of sample ``i`` depend only on (seed, epoch, i). The epoch lives in shared
    memory, so :meth:`set_epoch` also reaches persistent DataLoader workers (call it before
    iterating the loader).
    """

    def __init__(self, base: Dataset, spec: AugmentSpec, seed: int, epoch: int = 0) -> None:
        self.base, self.spec, self.seed = base, spec, seed
        self.transforms = [standard_view(spec, v) for v in spec.views()]
        self._epoch = torch.tensor([epoch]).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        index = int(index)
        img, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues seeds for CUDA/XPU (slow)
            torch.default_generator.manual_seed(mix_seed(self.seed, self.epoch, index))
            return [t(img) for t in self.transforms], label


# --- both: the parameters they draw -----------------------------------------------------------


def sampled_params(
    pipeline: str, spec: AugmentSpec, view: int, n: int, height: int, width: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """N draws of one view's crop and jitter parameters for an H x W image, by either pipeline.

    ``standard`` calls the torchvision transforms' own ``make_params``; ``fast`` calls
    :func:`sample_view_params`. Returns [N] tensors: ``scale`` (crop area / image area),
    ``aspect`` (crop width / height), ``brightness``, ``contrast``, ``saturation``, ``hue``.
    """
    vs = spec.views()[view]
    if pipeline == "fast":
        p = sample_view_params(spec, vs, n, height, width, torch.Generator().manual_seed(seed))
        w, h = (p.boxes[:, 2] - p.boxes[:, 0]), (p.boxes[:, 3] - p.boxes[:, 1])
        f = p.factors
    else:
        t = standard_view(spec, vs).transforms
        crop, jitter = t[1], t[4].transforms[0]
        img = [tv_tensors.Image(torch.zeros(3, height, width, dtype=torch.uint8))]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            boxes = [crop.make_params(img) for _ in range(n)]
            jit = [jitter.make_params(img) for _ in range(n)]
        w = torch.tensor([b["width"] for b in boxes], dtype=torch.float32)
        h = torch.tensor([b["height"] for b in boxes], dtype=torch.float32)
        keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
        f = torch.tensor([[j[k] if j[k] is not None else math.nan for k in keys] for j in jit])
    out = {"scale": w * h / (height * width), "aspect": w / h}
    return out | dict(zip(("brightness", "contrast", "saturation", "hue"), f.T, strict=True))


# --- CutMix -----------------------------------------------------------------------------------


def cutmix(
    views: list[torch.Tensor], generator: torch.Generator, views_to_mix: tuple[int, ...] = (0, 1)
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Paste a box of image ``perm[i]`` into image ``i`` of each view in ``views_to_mix``.

    As CutMix: lambda ~ U(0, 1) (Beta(1, 1)), a box of side sqrt(1 - lambda) x the image side,
    centred uniformly, clipped to the image; the same box and one permutation for every mixed
    view. Pass the mixed views to the online branch, the unmixed ones to the target branch.

    Args:
        views: [N, C, H, W] tensors; the mixed ones must share H, W.
        generator: a CPU generator, all randomness comes from it.
        views_to_mix: which views to mix.

    Returns:
        (views with the mixed ones replaced, perm [N] long, ratio [N] float: the kept area
        fraction r of each image after clipping), perm and ratio on the views' device.
    """
    ref = views[views_to_mix[0]]
    n, _, h, w = ref.shape
    if any(views[i].shape[-2:] != ref.shape[-2:] for i in views_to_mix):
        raise ValueError("cutmix: the mixed views must have the same size")
    perm = torch.randperm(n, generator=generator)
    cut = (1 - torch.rand(n, generator=generator)).sqrt()
    cw, ch = (w * cut).long(), (h * cut).long()
    cx = torch.randint(w, (n,), generator=generator)
    cy = torch.randint(h, (n,), generator=generator)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h)
    ratio = 1 - ((x1 - x0) * (y1 - y0)).float() / (h * w)
    cols, rows = torch.arange(w).view(1, 1, w), torch.arange(h).view(1, h, 1)
    box = (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))
    box = box & (rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
    box, perm, ratio = (t.to(ref.device, non_blocking=True) for t in (box, perm, ratio))
    mixed = [
        torch.where(box.unsqueeze(1), v[perm], v) if i in views_to_mix else v
        for i, v in enumerate(views)
    ]
    return mixed, perm, ratio
