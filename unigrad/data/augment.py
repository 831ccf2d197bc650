"""Augmentation: the BYOL/SimSiam recipe as two pipelines with the same distribution.

Per view, in this order: random resized crop (scale range per view, aspect 3/4-4/3), horizontal
flip (p 0.5), colour jitter (brightness/contrast/saturation/hue in a random order per sample, as
torchvision's ColorJitter, applied with ``jitter_p``), grayscale (``gray_p``), Gaussian blur
(kernel ~10% of the view, sigma 0.1-2, ``blur_p``), solarize (threshold 0.5, ``solarize_p``),
normalise with MEAN/STD. Views come global first, then local (multi-crop). The four
probabilities may differ per view (BYOL: blur 1.0 / 0.1, solarize 0 / 0.2; see
:class:`AugmentSpec`).

- standard: :class:`ViewsDataset`, torchvision ``transforms.v2`` per image in DataLoader
  workers (any image size); the randomness of sample ``i`` is a pure function of
  (seed, epoch, i), so a resumed run redraws the same views without saving RNG states. Its
  per-image transform, :class:`MultiViewTransform` (``img -> list of views``), also serves as
  the ``transform`` of any user's Dataset (then drawing from torch's global RNG).
- fast: :class:`FastAugment`, whole batches (uint8, or float in [0, 1]) as tensors (in-memory
  data), every random number drawn from an explicit ``torch.Generator`` (a CPU one, or on a
  GPU one on the images' device, ``device_draws``); crops through one ``roi_align`` call.

The fast pipeline's crop boxes are continuous (no rounding to whole pixels), otherwise its
parameters follow torchvision's sampling step by step (10 crop trials then a centre crop, the
same factor ranges, a uniform random order of the four jitter ops); :func:`sampled_params`
exposes both pipelines' draws so a test can compare them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from unigrad.data import kernels as K
from unigrad.data.datasets import MEAN, STD, mix_seed
from unigrad.data.recipe import (  # re-exported: the recipe's home is recipe.py
    PROB_KEYS,
    AugmentSpec,
    ViewSpec,
    parse_multi_crop,
    view_probabilities,
)
from unigrad.errors import UserError

__all__ = [
    "PROB_KEYS",
    "AugmentSpec",
    "FastAugment",
    "MultiViewTransform",
    "ViewParams",
    "ViewSpec",
    "ViewsDataset",
    "apply_view",
    "check_images",
    "cutmix",
    "finish_view",
    "parse_multi_crop",
    "sample_view_params",
    "sampled_params",
    "standard_view",
    "view_probabilities",
]

ASPECT = (3 / 4, 4 / 3)
SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 0.5


# --- fast: whole batches --------------------------------------------------------------------


@dataclass
class ViewParams:
    """One view's random parameters for N images (on the generator's device).

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

    def map(self, fn: Any) -> ViewParams:
        """The same parameters with ``fn`` applied to every tensor (a row slice, a move)."""
        return ViewParams(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    @staticmethod
    def cat(params: list[ViewParams]) -> ViewParams:
        """The parameters of consecutive groups of images as one."""
        return ViewParams(
            **{f.name: torch.cat([getattr(p, f.name) for p in params]) for f in fields(ViewParams)}
        )


def sample_view_params(
    spec: AugmentSpec, view: ViewSpec, n: int, height: int, width: int, g: torch.Generator
) -> ViewParams:
    """Draw one view's parameters for N images of H x W, the fast pipeline's way, on the
    generator's device (a CUDA generator draws them where the images are: no host transfer)."""
    trials, area, dev = 10, height * width, g.device
    scale = torch.empty(n, trials, device=dev).uniform_(*view.scale, generator=g) * area
    log_aspect = [math.log(a) for a in ASPECT]
    ratio = torch.empty(n, trials, device=dev).uniform_(*log_aspect, generator=g).exp()
    w, h = (scale * ratio).sqrt(), (scale / ratio).sqrt()
    ok = (w <= width) & (h <= height)
    first = ok.int().argmax(1, keepdim=True)  # torchvision: the first trial that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # none of the trials fits: torchvision's centre crop with the aspect clamped to ASPECT
    in_ratio = width / height
    fw = width if in_ratio <= ASPECT[1] else height * ASPECT[1]
    fh = height if in_ratio >= ASPECT[0] else width / ASPECT[0]
    w, h = torch.where(ok.any(1), w, fw), torch.where(ok.any(1), h, fh)
    x0 = torch.rand(n, generator=g, device=dev) * (width - w)
    y0 = torch.rand(n, generator=g, device=dev) * (height - h)
    lo, hi = K.constant(tuple(spec.jitter_ranges()), dev).T

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=g, device=dev) < p

    return ViewParams(
        boxes=torch.stack((x0, y0, x0 + w, y0 + h), 1),
        flip=coin(0.5),
        jitter=coin(view.jitter_p),
        factors=lo + (hi - lo) * torch.rand(n, 4, generator=g, device=dev),
        order=torch.rand(n, 4, generator=g, device=dev).argsort(1),
        gray=coin(view.gray_p),
        blur=coin(view.blur_p),
        sigma=torch.empty(n, device=dev).uniform_(*SIGMA, generator=g),
        solarize=coin(view.solarize_p),
    )


def _apply(
    x: torch.Tensor, mask: torch.Tensor, fn: Any, *args: torch.Tensor, masked: bool = False
) -> torch.Tensor:
    """x[mask] = fn(x[mask], *args[mask]).

    Host draws (``masked`` False, the mask on the CPU): the op runs on the selected rows only,
    selected with no device sync. Device draws (``masked``, the mask on x's device): the op runs
    on every row and ``torch.where`` keeps the selected ones, so nothing waits on the host."""
    if masked:
        out = fn(x, *(a.to(x.device) for a in args))
        return torch.where(mask.to(x.device).view(-1, 1, 1, 1), out, x)
    idx = mask.nonzero()[:, 0]
    if idx.numel() == len(mask):
        return fn(x, *(a.to(x.device, non_blocking=True) for a in args))
    if idx.numel():
        on = idx.to(x.device, non_blocking=True)
        x[on] = fn(x[on], *(a[idx].to(x.device, non_blocking=True) for a in args))
    return x


def apply_view(
    spec: AugmentSpec,
    x: torch.Tensor,
    p: ViewParams,
    size: int,
    channels_last: bool = False,
    masked: bool = False,
) -> torch.Tensor:
    """One view of a batch: x [N, 3, H, W] float in [0, 1] -> [N, 3, size, size] normalised
    (``masked``: see :func:`finish_view`)."""
    n = x.shape[0]
    index = torch.arange(n, dtype=p.boxes.dtype, device=p.boxes.device)
    rois = torch.cat((index[:, None], p.boxes), 1)
    v = K.crop_resize(x, rois.to(x.device, non_blocking=True), size)
    return finish_view(spec, v, p, channels_last, masked=masked)


def finish_view(
    spec: AugmentSpec,
    v: torch.Tensor,
    p: ViewParams,
    channels_last: bool = False,
    direct: bool = False,
    masked: bool = False,
) -> torch.Tensor:
    """Everything of a view after its crop: v [N, 3, s, s] float in [0, 1], the crops of
    ``p.boxes`` -> flipped, jittered, grayscale, blurred, solarized (per ``p``) and normalised
    [N, 3, s, s], in place where it can. ``p.boxes`` is not read (the standard pipeline's
    workers cut the crops, :mod:`unigrad.data.crops`). ``direct``: the faster hue and blur
    kernels (:func:`~unigrad.data.kernels.adjust_hue_direct`,
    :func:`~unigrad.data.kernels.gaussian_blur_matmul`, equal up to float rounding); the fast
    pipeline keeps the reference kernels, so recorded runs stay bit-identical. ``masked``: the
    parameters live on v's device (device draws) and every op runs on the whole batch, kept
    where its mask is set (no host sync, no transfer); else the masks are on the CPU and each op
    runs on its selected rows only (the same views from the same parameters)."""
    jitter_ops = K.JITTER_OPS_DIRECT if direct else K.JITTER_OPS
    blur = K.gaussian_blur_matmul if direct else K.gaussian_blur
    size = v.shape[-1]
    m = {"masked": masked}
    v = _apply(v, p.flip, lambda t: t.flip(-1), **m)
    identity = [lo == hi for lo, hi in spec.jitter_ranges()]  # torchvision skips these ops
    for k in range(4):
        for op, fn in enumerate(jitter_ops):
            if not identity[op]:
                v = _apply(v, p.jitter & (p.order[:, k] == op), fn, p.factors[:, op], **m)
    v = _apply(v, p.gray, lambda t: K.grayscale(t).repeat(1, 3, 1, 1), **m)
    ksize = K.blur_kernel_size(size)
    v = _apply(v, p.blur, lambda t, s: blur(t, s, ksize), p.sigma, **m)
    v = _apply(v, p.solarize, lambda t: K.solarize(t, SOLARIZE_THRESHOLD), **m)
    mean = K.constant(MEAN, v.device).view(1, 3, 1, 1)
    std = K.constant(STD, v.device).view(1, 3, 1, 1)
    v = (v - mean) / std
    return v.contiguous(memory_format=torch.channels_last) if channels_last else v


def check_images(images: Any, layout: str, who: str) -> None:
    """Refuse anything but a uint8 (0..255) or floating ([0, 1]) tensor of ``layout``
    ("N, 3, H, W" or "3, H, W") with one line saying what was given and what is expected."""
    want = f"{who} expects images [{layout}], uint8 in 0..255 or floating in [0, 1]"
    if not isinstance(images, torch.Tensor):
        raise UserError(f"{want}; got a {type(images).__name__}")
    rank = layout.count(",") + 1
    if images.dim() != rank or images.shape[-3] != 3:
        raise UserError(f"{want}; got shape {list(images.shape)}")
    if images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise UserError(f"{want}; got dtype {images.dtype}")
    if images.numel():
        lo, hi = (float(v) for v in torch.aminmax(images))  # one device sync
        if not 0 <= lo <= hi <= 1:  # NaN fails too
            raise UserError(
                f"{want}; got {images.dtype} values in [{lo:.4g}, {hi:.4g}] (pass images "
                "before normalisation: x / 255, not (x - mean) / std)"
            )


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
        device_draws: draw the parameters from a generator on the images' device and apply
            every op masked (:func:`finish_view`): no host sync and no host-to-device transfer
            per batch (the fast pipeline on a GPU). Else (default) the generator is a CPU one and
            each op runs on its selected rows only (fewer operations; the CPU's choice). The
            same generator state gives the same views either way.
        compile_backend: with ``device_draws``, apply the drawn parameters (crop, the masked
            ops, normalisation) as one function compiled by ``torch.compile`` with this backend
            (``inductor``: a few fused kernels per view instead of some hundred launches;
            1.6-1.9x the eager masked path on a CPU core, BENCHMARKS §1), one graph per
            batch shape. None: eager.
    """

    def __init__(
        self,
        spec: AugmentSpec,
        channels_last: bool = False,
        cpu_threads: int | None = 1,
        device_draws: bool = False,
        compile_backend: str | None = None,
    ) -> None:
        self.spec, self.views, self.channels_last = spec, spec.views(), channels_last
        self.cpu_threads, self.device_draws = cpu_threads, device_draws
        self._apply = self._apply_eager
        if compile_backend is not None and device_draws:
            self._apply = torch.compile(self._apply_eager, backend=compile_backend, dynamic=False)

    def _apply_eager(self, x: torch.Tensor, params: list[ViewParams]) -> list[torch.Tensor]:
        """x [N, 3, H, W] float in [0, 1] and each view's parameters -> the views."""
        return [
            apply_view(self.spec, x, p, v.size, self.channels_last, self.device_draws)
            for p, v in zip(params, self.views, strict=True)
        ]

    def sample(self, n: int, height: int, width: int, g: torch.Generator) -> list[ViewParams]:
        """Each view's parameters for N images of H x W, drawn on ``g``'s device."""
        return [sample_view_params(self.spec, v, n, height, width, g) for v in self.views]

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, part: tuple[int, int] = (0, 1)
    ) -> list[torch.Tensor]:
        """images: [N, 3, H, W] on any device -> views [N, 3, s, s] float32 there.

        The images are uint8 (0..255) or floating in [0, 1] (float ``x / 255`` gives the views
        of uint8 ``x``); anything else (another dtype, values outside [0, 1] such as already
        normalised images, another shape) raises :class:`UserError`.

        ``part`` = (rank, world_size): the parameters are drawn for the whole global batch of
        N * world_size images (same generator state on every rank) and this rank applies its
        slice, so a distributed run sees exactly the views of a single-process run.
        """
        check_images(images, "N, 3, H, W", "FastAugment")
        want = images.device if self.device_draws else torch.device("cpu")
        if generator.device.type != want.type:
            raise ValueError(
                f"FastAugment(device_draws={self.device_draws}) draws from a {want.type} "
                f"torch.Generator, got a {generator.device.type} one"
            )
        n, _, h, w = images.shape
        rank, world = part
        threads = torch.get_num_threads()
        if images.device.type == "cpu" and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        try:
            params = self.sample(n * world, h, w, generator)
            if world > 1:
                params = [p.map(lambda t: t[rank * n : (rank + 1) * n]) for p in params]
            x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
            return self._apply(x, params)
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
                p=view.jitter_p,
            ),
            v2.RandomGrayscale(view.gray_p),
            v2.RandomApply(
                [v2.GaussianBlur(K.blur_kernel_size(view.size), sigma=SIGMA)], p=view.blur_p
            ),
            v2.RandomSolarize(SOLARIZE_THRESHOLD, p=view.solarize_p),
            v2.Normalize(MEAN, STD),
        ]
    )


class MultiViewTransform:
    """``img -> list of views``: the recipe's views of one image, for any torch Dataset.

    ``torchvision.datasets.CIFAR10(root, transform=MultiViewTransform(image_size=32))`` yields
    (views, label); a DataLoader's default collate turns the views into a list of
    [B, 3, s, s] batches. Each view is torchvision v2 per-image ops (:func:`standard_view`).

    Input: a PIL image (converted to RGB), or a [3, H, W] tensor, uint8 (0..255) or floating
    in [0, 1]. Output: a list of float32 [3, s, s] tensors normalised with MEAN/STD, global
    views first (s = ``image_size``, or multi_crop's sizes), then local ones.

    Randomness comes from torch's global RNG (``torch.manual_seed``; DataLoader workers get
    seeds of their own). :class:`ViewsDataset` draws from (seed, epoch, index) instead.

    Args:
        spec: the recipe (default :class:`AugmentSpec`'s, 224 px).
        **recipe: AugmentSpec fields that override ``spec``'s, e.g. ``image_size=32,
            blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2]`` (BYOL's two views).
    """

    def __init__(self, spec: AugmentSpec | None = None, **recipe: Any) -> None:
        valid = [f.name for f in fields(AugmentSpec)]
        unknown = sorted(set(recipe) - set(valid))
        if unknown:
            raise UserError(
                f"MultiViewTransform: unknown recipe key {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(valid)}"
            )
        self.spec = replace(spec or AugmentSpec(), **recipe)
        self.transforms = [standard_view(self.spec, v) for v in self.spec.views()]

    def __call__(self, img: Any) -> list[torch.Tensor]:
        if isinstance(img, Image.Image) and img.mode != "RGB":
            img = img.convert("RGB")
        elif isinstance(img, torch.Tensor):
            check_images(img, "3, H, W", "MultiViewTransform")
        return [t(img) for t in self.transforms]

    def __repr__(self) -> str:
        return f"MultiViewTransform({self.spec})"


class ViewsDataset(Dataset):
    """(image, label) dataset -> (list of view tensors [3, s, s], label).

    The views of sample ``i`` depend only on (seed, epoch, i). The epoch lives in shared
    memory, so :meth:`set_epoch` also reaches persistent DataLoader workers (call it before
    iterating the loader).
    """

    def __init__(self, base: Dataset, spec: AugmentSpec, seed: int, epoch: int = 0) -> None:
        self.base, self.spec, self.seed = base, spec, seed
        self.transform = MultiViewTransform(spec)
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
            return self.transform(img), label


# --- both: the parameters they draw -----------------------------------------------------------


OPS = ("flip", "jitter", "gray", "blur", "solarize")


def sampled_params(
    pipeline: str,
    spec: AugmentSpec,
    view: int,
    n: int,
    height: int,
    width: int,
    seed: int = 0,
    ops: bool = False,
) -> dict[str, torch.Tensor]:
    """N draws of one view's crop and jitter parameters for an H x W image, by either pipeline.

    ``standard`` calls the torchvision transforms' own ``make_params``; ``fast`` calls
    :func:`sample_view_params`; ``folder`` (``standard`` on an image folder,
    :mod:`unigrad.data.crops`) draws sample i's parameters from (seed, epoch 0, i).
    Returns [N] tensors: ``scale`` (crop area / image area),
    ``aspect`` (crop width / height), ``brightness``, ``contrast``, ``saturation``, ``hue``;
    with ``ops`` also [N] bool ``flip``, ``jitter``, ``gray``, ``blur``, ``solarize``: whether
    each op applies (``standard``: its torchvision transform, run on a small probe image,
    returned a new image; jitter and blur: a ``RandomApply`` of the same ``p`` around a copy).
    """
    vs = spec.views()[view]
    if pipeline in ("fast", "folder"):
        if pipeline == "fast":
            g = torch.Generator().manual_seed(seed)
            p = sample_view_params(spec, vs, n, height, width, g)
        else:  # standard on a folder: drawn per (seed, epoch, index) in the workers
            from unigrad.data.crops import draw_params

            drawn = [draw_params(spec, seed, 0, i, height, width)[view] for i in range(n)]
            p = ViewParams.cat(drawn)
        w, h = (p.boxes[:, 2] - p.boxes[:, 0]), (p.boxes[:, 3] - p.boxes[:, 1])
        f = p.factors
        flags = {k: getattr(p, k) for k in OPS}
    else:
        t = standard_view(spec, vs).transforms
        crop, jitter = t[1], t[4].transforms[0]
        img = [tv_tensors.Image(torch.zeros(3, height, width, dtype=torch.uint8))]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            boxes = [crop.make_params(img) for _ in range(n)]
            jit = [jitter.make_params(img) for _ in range(n)]
            if ops:  # a random-apply transform returns its input when it does not apply
                probe = tv_tensors.Image(torch.rand(3, 4, 4))
                # RandomApply's draw with a cheap op in place of its (slow) jitter or blur
                jitter_draw, blur_draw = (v2.RandomApply([torch.clone], s.p) for s in (t[4], t[6]))
                steps = dict(zip(OPS, (t[2], jitter_draw, t[5], blur_draw, t[7]), strict=True))
                flags = {
                    k: torch.tensor([s(probe) is not probe for _ in range(n)])
                    for k, s in steps.items()
                }
        w = torch.tensor([b["width"] for b in boxes], dtype=torch.float32)
        h = torch.tensor([b["height"] for b in boxes], dtype=torch.float32)
        keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
        f = torch.tensor([[j[k] if j[k] is not None else math.nan for k in keys] for j in jit])
    out = {"scale": w * h / (height * width), "aspect": w / h}
    out |= dict(zip(("brightness", "contrast", "saturation", "hue"), f.T, strict=True))
    return out | flags if ops else out


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
        generator: all randomness comes from it, drawn on its device (a CPU one, or one on
            the views' device: then nothing is copied from the host).
        views_to_mix: which views to mix.

    Returns:
        (views with the mixed ones replaced, perm [N] long, ratio [N] float: the kept area
        fraction r of each image after clipping), perm and ratio on the views' device.
    """
    ref = views[views_to_mix[0]]
    n, _, h, w = ref.shape
    if any(views[i].shape[-2:] != ref.shape[-2:] for i in views_to_mix):
        raise ValueError("cutmix: the mixed views must have the same size")
    dev = generator.device
    perm = torch.randperm(n, generator=generator, device=dev)
    cut = (1 - torch.rand(n, generator=generator, device=dev)).sqrt()
    cw, ch = (w * cut).long(), (h * cut).long()
    cx = torch.randint(w, (n,), generator=generator, device=dev)
    cy = torch.randint(h, (n,), generator=generator, device=dev)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h)
    ratio = 1 - ((x1 - x0) * (y1 - y0)).float() / (h * w)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    box = (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))
    box = box & (rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
    box, perm, ratio = (t.to(ref.device, non_blocking=True) for t in (box, perm, ratio))
    mixed = [
        torch.where(box.unsqueeze(1), v[perm], v) if i in views_to_mix else v
        for i, v in enumerate(views)
    ]
    return mixed, perm, ratio
