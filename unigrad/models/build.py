"""The network a run's record describes: the one place where a configuration becomes a model.

Training (``engine/parts.py``), the evaluation of a checkpoint (``eval/features.py``, and so
``unigrad export``), the random-init baseline (``eval/protocol.py``) and the precision and
compile probes (which time the model ``build_parts`` made) all build it here: the backbone and
widths of the ``model`` section, and the heads the run's method declares
(:attr:`unigrad.core.needs.Needs.heads`, built with the method's checked hyperparameters).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from unigrad.core.errors import HyperparameterError
from unigrad.core.spec import MethodSpec
from unigrad.errors import UserError
from unigrad.methods import get_method
from unigrad.models.networks import SiameseModel, build_model

__all__ = ["model_from_config", "record_method"]


def _getter(cfg: Any) -> Any:
    return cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)


def record_method(cfg: Any) -> tuple[MethodSpec, dict[str, Any]]:
    """The method a record names and its checked hyperparameters at the record's width.

    Raises:
        UserError: the method is not registered in this process (a method of your own: call
            ``unigrad.methods.register(spec)`` first) or its values do not check.
    """
    get = _getter(cfg)
    try:
        spec = get_method(get("method"))
        form = spec.form(get("form"), get("variant"))
        hp = spec.resolve(form, int(get("proj_dim")), dict(get("hparams") or {}))
    except KeyError as e:
        raise UserError(
            f"{e.args[0]}; a method of your own must be registered "
            "(unigrad.methods.register(spec)) before its runs are built or loaded"
        ) from None
    except HyperparameterError as e:
        raise UserError(str(e)) from None
    return spec, hp


def model_from_config(
    cfg: Any, *, backbone: nn.Module | None = None, feat_dim: int | None = None
) -> SiameseModel:
    """The network a configuration describes, with the heads its method declares.

    ``cfg``: a :class:`~unigrad.config.Config` or a mapping with the ``model`` section's keys,
    ``image_size``, ``method``, ``form``, ``variant`` and ``hparams`` (a checkpoint's stored
    config); ``backbone``: your own module in place of ``cfg.backbone``. An unset
    ``image_size`` builds for 224 px (it only matters to ViTs).
    """
    get = _getter(cfg)
    spec, hp = record_method(cfg)
    return build_model(
        backbone if backbone is not None else get("backbone"),
        get("width"),
        get("cifar_stem"),
        get("proj_depth"),
        get("proj_dim"),
        get("proj_hidden"),
        pred_hidden=get("pred_hidden"),
        image_size=get("image_size") or 224,
        norm=get("norm", "bn") or "bn",
        feat_dim=feat_dim,
        heads=spec.needs.heads,
        hp=hp,
    )
