"""Augmentation: the BYOL/SimSiam recipe as two pipelines with the same distribution, by
concern:

- :mod:`unigrad.data.recipe`: what the views are (:class:`AugmentSpec`, :class:`ViewSpec`, the
  fixed ranges), torch-free;
- :mod:`unigrad.data.draws`: each view's random parameters for a batch (:class:`ViewParams`);
- :mod:`unigrad.data.batched`: the recipe on whole batches as tensors (:class:`FastAugment`, the
  fast pipeline; :func:`finish_view` for the image-folder workers' crops);
- :mod:`unigrad.data.per_image`: the recipe per image with torchvision ``transforms.v2``
  (:class:`MultiViewTransform` for any Dataset, :class:`ViewsDataset`);
- :mod:`unigrad.engine.cutmix`: CutMix, next to the step that mixes the views.

This module gathers their public names (``from unigrad.data.augment import FastAugment`` keeps
working); the package's own code imports them from where they live.
"""

from unigrad.data.batched import FastAugment, apply_view, check_images, finish_view
from unigrad.data.draws import ViewParams, sample_view_params
from unigrad.data.per_image import MultiViewTransform, ViewsDataset, standard_view
from unigrad.data.recipe import (
    PROB_KEYS,
    AugmentSpec,
    ViewSpec,
    parse_multi_crop,
    view_probabilities,
)
from unigrad.engine.cutmix import cutmix

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
    "standard_view",
    "view_probabilities",
]
