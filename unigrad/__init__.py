"""unigrad: Siamese self-supervised learning in loss form and unified gradient form.

The public API, for one's own training loop (README: "Use unigrad in your own training loop"):

- objective: :class:`Objective` (loss or gradient form of any method; owns the sample set, e.g.
  F or the memory bank, as buffers), :class:`TargetOut`, :data:`METHODS`, :func:`get_method`,
  :func:`register` (add a method);
- a method of one's own: :class:`MethodSpec` (its forms and hyperparameters), :class:`Form` (a
  loss form or Table 2 row), :class:`Term` (its positive and negative terms, computed from a
  :class:`Step`), :class:`Param` (one hyperparameter: default, check, doc);
- target branch: :class:`TargetBranch` (shared, stop-gradient, momentum, snapshot) with its EMA
  update, :func:`cosine_momentum`;
- networks: :func:`mlp` (projector / predictor heads), :func:`make_backbone` (a backbone by name:
  torchvision ResNets, ``timm:NAME``), :func:`build_model` (also from one's own module),
  :func:`resnet_backbone`;
- views: :class:`MultiViewTransform` (per image, any Dataset), :class:`FastAugment` (whole uint8
  or float batches, CPU or GPU), :class:`AugmentSpec`, :class:`ViewsDataset`, :func:`cutmix`
  with :class:`Mix`;
- the trainer: :func:`make_config`, :class:`Trainer` (a config; optionally one's own backbone
  module, Dataset or DataLoader); export: :func:`export_backbone` (torchvision state_dict),
  :func:`export_safetensors` and :func:`load_exported_backbone` (safetensors + JSON description).
"""

from unigrad.config import Config, make_config
from unigrad.core.objective import Mix, Objective
from unigrad.core.spec import Form, MethodSpec, Param
from unigrad.core.targets import TargetBranch, TargetOut, cosine_momentum
from unigrad.core.term import Step, Term
from unigrad.data.batched import FastAugment
from unigrad.data.per_image import MultiViewTransform, ViewsDataset
from unigrad.data.recipe import AugmentSpec
from unigrad.engine.cutmix import cutmix
from unigrad.engine.trainer import Trainer
from unigrad.errors import UserError
from unigrad.eval.export import export_backbone, export_safetensors, load_exported_backbone
from unigrad.methods import METHODS, get_method, register
from unigrad.models.networks import build_model, make_backbone, mlp, resnet_backbone

__all__ = [
    "METHODS",
    "AugmentSpec",
    "Config",
    "FastAugment",
    "Form",
    "MethodSpec",
    "Mix",
    "MultiViewTransform",
    "Objective",
    "Param",
    "Step",
    "TargetBranch",
    "TargetOut",
    "Term",
    "Trainer",
    "UserError",
    "ViewsDataset",
    "build_model",
    "cosine_momentum",
    "cutmix",
    "export_backbone",
    "export_safetensors",
    "get_method",
    "load_exported_backbone",
    "make_backbone",
    "make_config",
    "mlp",
    "register",
    "resnet_backbone",
]
__version__ = "0.2.0"
