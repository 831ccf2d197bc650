"""The pretraining configuration: one flat, typed record (OmegaConf structured config).

Built at the edge: YAML preset -> CLI flags -> ``--set key=value`` overrides; an unknown key or a
value of the wrong type fails with the list of valid keys. Everything below the CLI receives
plain keyword arguments taken from it.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from unigrad.core.objective import check_parts
from unigrad.core.spec import HyperparameterError
from unigrad.core.targets import TARGETS
from unigrad.data.recipe import AugmentSpec
from unigrad.errors import UserError
from unigrad.methods import METHODS, get_method
from unigrad.models.networks import backbone_error


@dataclass
class Config:
    # method (paper: loss form / gradient form, target branch, sample set)
    method: str = "unigrad"
    form: str | None = None  # loss | grad; None: the method's default
    variant: str | None = None  # gradient-form row (Table 2), e.g. f/g/h; None: default
    target: str | None = None  # shared | stopgrad | momentum | momentum_pos | snapshot
    snapshot_every: int = 1  # steps between refreshes of the snapshot target; 0: every epoch
    symmetry: str = "sym"  # sym | asym | asym2x (SimSiam's ablation)
    sample_set: str | None = None  # draw the negatives from another set the form supports
    # the method's hyperparameters (tau, lambd, rho, ...; `unigrad methods` lists them with their
    # defaults and checks). A top-level key that names one (`--set tau=0.1`) lands here.
    hparams: dict[str, Any] = field(default_factory=dict)
    # networks
    backbone: str = "resnet18"  # resnet18/34/50/101 | timm:NAME (any timm model) | vit_*
    width: float = 1.0
    cifar_stem: bool = False
    proj_depth: int = 3
    proj_dim: int = 2048
    proj_hidden: int | None = None
    pred_hidden: int | None = None
    norm: str = "bn"  # bn | gn | none: normalisation layers of backbone and MLPs
    sync_bn: bool = False
    # data
    data: str | None = None  # ImageFolder root with train/ (val/, test/)
    dataset: str | None = None  # cifar10 | cifar100 | stl10 (torchvision)
    download: bool = False
    fallback_dataset: str | None = None  # torchvision dataset to download if `data` is missing
    train_split: str = "train"
    eval_split: str = "val"
    pipeline: str = "auto"  # fast | standard | auto (fast when the data fits in memory)
    workers: int = 2
    bad_images: str = "skip"  # skip (warn, count) | fail
    # augmentation (BYOL/SimSiam recipe; defaults and checks in data/recipe.py AugmentSpec)
    image_size: int | None = None  # None: from the data (its image side, 224 for large ones)
    crop_scale_min: float = AugmentSpec.crop_scale_min
    crop_scale_max: float = AugmentSpec.crop_scale_max
    brightness: float = AugmentSpec.brightness
    contrast: float = AugmentSpec.contrast
    saturation: float = AugmentSpec.saturation
    hue: float = AugmentSpec.hue
    # op probabilities: one number (every view) or a list, one per global view (AugmentSpec)
    jitter_p: Any = AugmentSpec.jitter_p
    gray_p: Any = AugmentSpec.gray_p
    blur_p: Any = AugmentSpec.blur_p  # BYOL's two views: [1.0, 0.1] (preset byol-augment)
    solarize_p: Any = AugmentSpec.solarize_p  # BYOL's two views: [0.0, 0.2]
    multi_crop: str = AugmentSpec.multi_crop  # e.g. "2x32,6x16": global x size, local x size
    local_scale_min: float = AugmentSpec.local_scale_min
    local_scale_max: float = AugmentSpec.local_scale_max
    cutmix: bool = False
    # optimisation
    epochs: int = 100
    max_steps: int | None = None  # stop early (smoke tests, benchmarks)
    batch_size: int = 256  # global batch (split over ranks)
    optimizer: str = "sgd"  # sgd | lars
    base_lr: float = 0.05  # lr = base_lr * batch_size / 256
    base_lr_bias: float | None = None  # LARS recipe: biases and BN (None: base_lr)
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    warmup_epochs: float | None = None  # None: 5, or half the run when that is shorter
    min_lr_ratio: float = 1e-3
    predictor_fixed_lr: bool | None = None  # None: the method's (SimSiam: True)
    predictor_lr_scale: float = 1.0  # the learned predictor's lr / the backbone's
    momentum_base: float | None = None  # EMA momentum at step 0; None: method's (0.996)
    momentum_final: float = 1.0
    # system
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto | off | bf16 | fp16 (auto: fp16 on CUDA, measured on CPUs)
    amp_resolved: str | None = None  # written by the run: fp32 | bf16 | fp16 (kept on resume)
    amp_measured: str | None = None  # written by the run: amp auto's CPU timings
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    # output
    out: str = "runs/unnamed"
    log_every: int = 10
    knn_every: int = 1  # epochs between kNN monitors (0: only at the end)
    knn_k: int = 200
    knn_t: float = 0.1
    knn_baseline: bool = False  # also evaluate the randomly initialised backbone at the end
    final_linear_epochs: int = 0  # linear probe on cached features at the end (0: off)
    diag_every: int = 50  # steps between diagnostics on the probe batch (0: off)
    probe_size: int = 128  # images in the fixed diagnostics probe batch
    ckpt_every: int = 0  # steps between mid-epoch checkpoints (0: end of epoch only)
    keep_epoch_ckpts: bool = False
    tensorboard: bool = True


KEYS = tuple(f.name for f in fields(Config))
#: Warm-up when none is set; shortened to half the run for runs shorter than twice this.
DEFAULT_WARMUP_EPOCHS = 5.0


def default_warmup(epochs: int) -> float:
    """The warm-up a run of ``epochs`` gets when ``warmup_epochs`` is not set."""
    return min(DEFAULT_WARMUP_EPOCHS, epochs / 2)


def shipped(package: str) -> list[str]:
    """Names of the YAML files shipped in ``unigrad.<package>`` (presets, grids)."""
    files = resources.files(f"unigrad.{package}").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def preset_names() -> list[str]:
    return shipped("presets")


def load_yaml(name_or_path: str, package: str = "presets") -> dict[str, Any]:
    """A shipped YAML file by name (``unigrad/<package>/NAME.yaml``), or any file by path;
    must hold a mapping."""
    kind = package.rstrip("s")
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"{kind} file {path} does not exist")
        text, src = path.read_text(), str(path)
    else:
        res = resources.files(f"unigrad.{package}") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise UserError(
                f"unknown {kind} {name_or_path!r}; shipped {package}: "
                f"{', '.join(shipped(package))} (or pass a path to a .yaml file)"
            )
        text, src = res.read_text(), str(res)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{src}:{mark.line + 1}" if mark is not None else src
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: YAML syntax error ({problem}); fix the {kind} file") from None
    if not isinstance(data, dict):
        raise UserError(f"{name_or_path}: a {kind} file must be a mapping of key: value")
    return data


def _unknown(keys: list[str]) -> UserError:
    hints = []
    valid = [k for k in KEYS if k != "hparams"]
    params = sorted(hyperparameter_names())
    for k in keys:
        close = difflib.get_close_matches(k, valid + params, n=1)
        hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return UserError(
        f"unknown config key {', '.join(hints)}. Valid keys: {', '.join(valid)}; "
        f"method hyperparameters (`unigrad methods`): {', '.join(params)}"
    )


_STR_KEYS = {f.name for f in fields(Config) if "str" in str(f.type)}


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> dict, values parsed as YAML scalars (1e-3, true, null), numbers
    separated by commas as a list (``blur_p=1.0,0.1``); keys of string type keep their text
    (``amp=off`` is "off", not YAML's false)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if not v or v.lower() in ("null", "none", "~"):
            out[k] = None
        elif k in _STR_KEYS:
            out[k] = v
        else:
            out[k] = yaml.safe_load(v)
            if isinstance(out[k], str):  # YAML 1.1 reads 1e-3 as a string
                with contextlib.suppress(ValueError):
                    out[k] = float(v) if "," not in v else [float(x) for x in v.split(",")]
    return out


def hyperparameter_names() -> set[str]:
    """Every registered method's hyperparameter names (the keys that go to ``hparams``)."""
    return {k for spec in METHODS.values() for k in spec.params}


def _route_hparams(layer: dict[str, Any]) -> dict[str, Any]:
    """A top-level key that names a method hyperparameter (``tau: 0.1``, also in a config.yaml
    written before ``hparams`` existed) moves into ``hparams``."""
    names = hyperparameter_names()
    out = {k: v for k, v in layer.items() if k in KEYS or k not in names}
    moved = {k: v for k, v in layer.items() if k not in KEYS and k in names}
    if moved:
        out["hparams"] = {**(layer.get("hparams") or {}), **moved}
    return out


def _method_defaults(layers: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """The layers' ``method_defaults`` blocks merged (later wins), each method and key checked:
    ``{method: {hyperparameter: value}}``, a protocol's choice for one method that a run of
    another method does not see (the cifar-quick preset gives UniGrad ``corr_source: online``)."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        block = layer.get("method_defaults") or {}
        if not isinstance(block, dict):
            raise UserError("method_defaults must map a method to {hyperparameter: value}")
        for name, values in block.items():
            _check(
                name in METHODS,
                f"method_defaults: unknown method {name!r}; choose one of {', '.join(METHODS)}",
            )
            _check(
                isinstance(values, dict),
                f"method_defaults.{name} must be a mapping of hyperparameter: value",
            )
            params = get_method(name).params
            for k in values:
                _check(
                    k in params,
                    f"method_defaults.{name}: {name} has no hyperparameter {k!r}; "
                    f"it takes {', '.join(params) or 'none'} (`unigrad methods`)",
                )
            merged.setdefault(name, {}).update(values)
    return merged


def build_config(*layers: dict[str, Any]) -> Config:
    """Merge override dicts (later wins) onto the defaults, type-checked; then validate.

    A layer may hold ``method_defaults: {method: {hyperparameter: value}}``: values for the run's
    method where no layer sets that hyperparameter (recorded in ``hparams``, so the run's
    config.yaml says what was used)."""
    defaults = _method_defaults(layers)
    layers = tuple(
        _route_hparams({k: v for k, v in layer.items() if k != "method_defaults"})
        for layer in layers
    )
    unknown = [k for layer in layers for k in layer if k not in KEYS]
    if unknown:
        raise _unknown(unknown)
    base = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(base, *[OmegaConf.create(layer) for layer in layers])
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = str(e.msg).splitlines()[0]  # OmegaConf appends full_key/object_type lines
        raise UserError(f"invalid value for config key {key!r}: {msg}") from None
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    given = {k: v for k, v in defaults.get(cfg.method, {}).items() if cfg.hparams.get(k) is None}
    try:
        validate(replace(cfg, hparams={**cfg.hparams, **given}))
        cfg.hparams.update(given)
    except UserError as e:
        validate(cfg)  # the run's own settings are at fault: say so
        # the protocol's default does not fit the rest of this run: the method's own is used
        named = ", ".join(f"{k}={v}" for k, v in given.items())
        _note(f"method_defaults {named} does not fit this run ({e}); {cfg.method}'s own is used")
    if cfg.warmup_epochs is None:  # resolved here, so config.yaml records the value used
        cfg.warmup_epochs = default_warmup(cfg.epochs)
        if cfg.warmup_epochs < DEFAULT_WARMUP_EPOCHS:
            _note(
                f"warm-up shortened to {cfg.warmup_epochs:g} epochs (half of the "
                f"{cfg.epochs}-epoch run; the default is {DEFAULT_WARMUP_EPOCHS:g})"
            )
    return cfg


def _note(text: str) -> None:
    """A default adapted to the run, said once (by rank 0)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {text}", file=sys.stderr)


def to_dict(cfg: Config) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in KEYS}


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)


def validate(cfg: Config) -> None:
    """Reject invalid values with a message that names the key and the allowed range."""
    _check(
        cfg.method in METHODS, f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}"
    )
    spec = get_method(cfg.method)
    _check(
        cfg.target is None or cfg.target in TARGETS,
        f"unknown target {cfg.target!r}; choose one of {', '.join(TARGETS)}",
    )
    try:
        form = spec.form(cfg.form, cfg.variant)
        if cfg.sample_set is not None:
            form = form.with_set(cfg.sample_set)
        check_parts(
            spec,
            form,
            target=cfg.target or spec.target,
            n_views=_n_views(cfg.multi_crop),
            symmetry=cfg.symmetry,
            cutmix=cfg.cutmix,
            hp=spec.resolve(form, cfg.proj_dim, cfg.hparams),
        )
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    except HyperparameterError as e:
        raise UserError(str(e)) from None
    _check(
        cfg.symmetry != "asym2x" or not cfg.multi_crop,
        "symmetry=asym2x takes neither multi_crop nor cutmix",
    )
    _check(
        cfg.batch_size >= 2,
        f"batch_size must be >= 2 (a batch of {cfg.batch_size} has no negatives "
        "and no batch statistics)",
    )
    _check(cfg.epochs >= 1, "epochs must be >= 1")
    _check(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps must be >= 1")
    _check(cfg.width > 0, "width must be > 0")
    problem = backbone_error(cfg.backbone)  # imports timm only for timm names
    _check(problem is None, str(problem))
    _check(1 <= cfg.proj_depth <= 5, "proj_depth must be in 1..5")
    _check(cfg.proj_dim >= 2, "proj_dim must be >= 2")
    _check(cfg.optimizer in ("sgd", "lars"), "optimizer must be sgd or lars")
    _check(cfg.norm in ("bn", "gn", "none"), "norm must be bn, gn or none")
    _check(cfg.base_lr > 0, "base_lr must be > 0")
    _check(cfg.predictor_lr_scale > 0, "predictor_lr_scale must be > 0")
    learned = [n for n, m in METHODS.items() if m.predictor == "mlp"]
    _check(
        spec.predictor == "mlp" or (cfg.predictor_lr_scale == 1 and not cfg.predictor_fixed_lr),
        f"predictor_lr_scale and predictor_fixed_lr apply to methods with a learned predictor "
        f"({', '.join(learned)}), not {cfg.method}; remove them",
    )
    _check(cfg.weight_decay >= 0, "weight_decay must be >= 0")
    w = cfg.warmup_epochs
    _check(w is None or w >= 0, f"warmup_epochs must be >= 0, got {w}")
    _check(
        w is None or w <= cfg.epochs,
        f"warmup_epochs {w} is longer than the run ({cfg.epochs} epochs); lower it "
        f"(--set warmup_epochs={default_warmup(cfg.epochs):g}), remove it to get the default "
        "that fits, or raise --epochs",
    )
    _check(
        cfg.image_size is None or cfg.image_size >= 8,
        f"image_size must be >= 8 (or null: from the data), got {cfg.image_size}",
    )
    _check(cfg.pipeline in ("auto", "fast", "standard"), "pipeline must be auto, fast or standard")
    _check(cfg.bad_images in ("skip", "fail"), "bad_images must be skip or fail")
    _check(cfg.amp in ("auto", "off", "bf16", "fp16"), "amp must be auto, off, bf16 or fp16")
    _check(cfg.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda")
    _check(
        cfg.amp_resolved in (None, "fp32", "bf16", "fp16"),
        "amp_resolved (written by the run) must be fp32, bf16 or fp16; remove it",
    )
    _check(
        0 < cfg.crop_scale_min <= cfg.crop_scale_max <= 1,
        "need 0 < crop_scale_min <= crop_scale_max <= 1",
    )
    _check(
        0 < cfg.local_scale_min <= cfg.local_scale_max <= 1,
        "need 0 < local_scale_min <= local_scale_max <= 1",
    )
    AugmentSpec.from_config(cfg)  # the op probabilities: one, or one per global view
    _check(
        cfg.momentum_base is None or 0 <= cfg.momentum_base <= 1, "momentum_base must be in [0, 1]"
    )
    _check(0 <= cfg.momentum_final <= 1, "momentum_final must be in [0, 1]")
    _check(
        cfg.data is None or cfg.dataset is None,
        "pass either data (a folder) or dataset (a name), not both",
    )
    _check(
        cfg.dataset in (None, "cifar10", "cifar100", "stl10"),
        "dataset must be cifar10, cifar100 or stl10",
    )


def _n_views(multi_crop: str) -> int:
    """Views per step (``2x32,6x16`` -> 8); a malformed value is left to the augmentation's
    parser, which says what it expects."""
    if not multi_crop:
        return 2
    try:
        return sum(int(part.split("x")[0]) for part in multi_crop.split(","))
    except ValueError:
        return 2


def make_config(preset: str | None = None, **overrides: Any) -> Config:
    """A checked :class:`Config` for :class:`~unigrad.Trainer`: a shipped preset (or YAML path)
    plus keyword overrides, e.g. ``make_config("cifar-quick", data="DIR", out="runs/a",
    method="byol")``. Method hyperparameters (``tau=0.1``) are accepted as keywords too."""
    return build_config(load_yaml(preset) if preset else {}, overrides)
