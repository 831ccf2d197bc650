"""The recipe per image with torchvision ``transforms.v2``, for any Dataset: the ``standard``
pipeline on a Dataset of images (:class:`ViewsDataset`, in DataLoader workers, any image size)
and the ``transform`` of a user's own Dataset (:class:`MultiViewTransform`).

The ops and their order are :mod:`unigrad.data.batched`'s (that module's docstring), drawn
per image; :class:`ViewsDataset` draws sample ``i``'s views from (seed, epoch, i), so a resumed
run redraws the same views without saving RNG states.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from unigrad.data import kernels as K
from unigrad.data.batched import check_images
from unigrad.data.datasets import MEAN, STD, mix_seed
from unigrad.data.recipe import ASPECT, SIGMA, SOLARIZE_THRESHOLD, AugmentSpec, ViewSpec
from unigrad.errors import UserError

__all__ = ["MultiViewTransform", "ViewsDataset", "standard_view"]


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
