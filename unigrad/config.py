"""The pretraining configuration: one flat, typed record (OmegaConf structured config) made of
sections, each defined and checked beside the code it configures (:data:`SECTIONS`).

Built at the edge: YAML preset -> CLI flags -> ``--set key=value`` overrides; an unknown key or a
value of the wrong type fails with the list of valid keys. A YAML layer may be flat
(``batch_size: 256``) or in sections (``optim: {batch_size: 256}``). Everything below the CLI
receives plain keyword arguments taken from it.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import sys
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from unigrad.core.errors import HyperparameterError
from unigrad.core.objective_config import ObjectiveConfig
from unigrad.core.section import TAGS, Section
from unigrad.data.data_config import DataConfig
from unigrad.data.recipe import AugmentConfig
from unigrad.engine.optim_config import DEFAULT_WARMUP_EPOCHS, OptimConfig, default_warmup
from unigrad.engine.run_config import RunConfig, compile_mode
from unigrad.errors import UserError
from unigrad.eval.eval_config import EvalConfig
from unigrad.methods import METHODS, get_method
from unigrad.models.model_config import ModelConfig


@dataclass
class Config(
    EvalConfig, RunConfig, OptimConfig, AugmentConfig, DataConfig, ModelConfig, ObjectiveConfig
):
    """The whole configuration: every section's fields in one flat record (``cfg.batch_size``),
    in the order objective, model, data, augment, optim, run, eval.

    Each section is defined and checked beside the code it configures (:data:`SECTIONS`);
    ``cfg.section("model")`` is that section's slice. Build it with :func:`make_config` /
    :func:`build_config` (checked there); a ``Config(...)`` built directly is checked by the
    :class:`~unigrad.Trainer` in the same way (:func:`check_config`).
    """

    name = ""

    def section(self, name: str) -> Section:
        """The section ``name`` (objective, model, data, augment, optim, run, eval) as its own
        dataclass, holding this config's values."""
        cls = SECTIONS[name]
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})


#: The sections by name, in the order of the record (and of config.yaml).
SECTIONS: dict[str, type] = {
    c.name: c
    for c in (
        ObjectiveConfig, ModelConfig, DataConfig, AugmentConfig, OptimConfig, RunConfig, EvalConfig
    )
}  # fmt: skip
KEYS = tuple(f.name for f in fields(Config))


def keys_tagged(tag: str) -> tuple[str, ...]:
    """The config keys whose field carries ``tag`` (:data:`unigrad.core.section.TAGS`)."""
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}; choose from {TAGS}")
    return tuple(f.name for f in fields(Config) if tag in f.metadata.get("tags", ()))


def key_docs() -> dict[str, tuple[str, str]]:
    """key -> (section, documentation), for every config key."""
    return {
        f.name: (name, f.metadata.get("doc", ""))
        for name, cls in SECTIONS.items()
        for f in fields(cls)
    }


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


def _flatten_sections(layer: dict[str, Any]) -> dict[str, Any]:
    """A layer in sections (``optim: {batch_size: 256}``) as flat keys; a key of the wrong
    section is refused naming its section. ``data`` is a section as a mapping, else the key."""
    out: dict[str, Any] = {}
    for k, v in layer.items():
        if k in SECTIONS and isinstance(v, dict):
            own = {f.name for f in fields(SECTIONS[k])}
            for key, value in v.items():
                if key not in own and key in KEYS:
                    home = key_docs()[key][0]
                    raise UserError(f"config key {key!r} belongs to section {home!r}, not {k!r}")
                out[key] = value  # an unknown key is refused with the others
        else:
            out[k] = v
    return out


#: Optimiser keys a protocol may set per method in ``method_defaults`` (the cifar-quick preset
#: gives UniGrad ``weight_decay: 2.0e-3``, chosen on val in issue 37).
METHOD_TRAINING_KEYS = tuple(f.name for f in fields(OptimConfig))


def _method_defaults(
    layers: tuple[dict[str, Any], ...],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], int]]:
    """The layers' ``method_defaults`` blocks merged (later wins), each method and key checked:
    ``{method: {hyperparameter or optimiser key: value}}``, a protocol's choice for one method
    that a run of another method does not see (the cifar-quick preset gives UniGrad
    ``corr_source: online``). Also returns, per (method, key), the index of the layer that gave
    it: an optimiser key set by a later layer wins over it."""
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], int] = {}
    optim = OmegaConf.structured(OptimConfig)
    for i, layer in enumerate(layers):
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
                    k in params or k in METHOD_TRAINING_KEYS,
                    f"method_defaults.{name}: {name} has no hyperparameter {k!r}; "
                    f"it takes {', '.join(params) or 'none'} (`unigrad methods`) and the "
                    "optimiser keys (the optim section: README, Configuration)",
                )
                _check_method_default(name, k, values[k], params.get(k), optim)
                origin[(name, k)] = i
            merged.setdefault(name, {}).update(values)
    return merged, origin


def _check_method_default(method: str, key: str, value: Any, param: Any, optim: Any) -> None:
    """A ``method_defaults`` value of the wrong type or out of its range is the preset's mistake
    (an error), whatever the run; one that does not fit the rest of a run gives way later."""
    where = f"method_defaults.{method}.{key}"
    if param is not None:
        try:
            param.resolve(key, value, None, 0)
        except HyperparameterError as e:
            raise UserError(f"{where}: {e}; fix the preset") from None
        return
    try:
        OmegaConf.merge(optim, {key: value})
    except OmegaConfBaseException as e:
        msg = str(e.msg).splitlines()[0]
        raise UserError(f"{where}: {msg}; fix the preset") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value}; fix the preset")


def build_config(*layers: dict[str, Any]) -> Config:
    """Merge override dicts (later wins) onto the defaults, type-checked; then validate.

    A layer may hold ``method_defaults: {method: {hyperparameter: value}}``: values for the run's
    method where no layer sets that hyperparameter (recorded in ``hparams``, so the run's
    config.yaml says what was used)."""
    layers = tuple(_flatten_sections(layer) for layer in layers)
    defaults, origin = _method_defaults(layers)
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
    own = defaults.get(cfg.method, {})
    for k in [k for k in own if k in METHOD_TRAINING_KEYS]:
        if not any(k in layer for layer in layers[origin[(cfg.method, k)] + 1 :]):
            setattr(cfg, k, own[k])  # the protocol's value unless a later layer sets the key
    given = {
        k: v for k, v in own.items() if k not in METHOD_TRAINING_KEYS and cfg.hparams.get(k) is None
    }
    try:
        validate(replace(cfg, hparams={**cfg.hparams, **given}))
        cfg.hparams.update(given)
    except UserError as e:
        validate(cfg)  # the run's own settings are at fault: say so
        # the protocol's default does not fit the rest of this run: the method's own is used
        named = ", ".join(f"{k}={v}" for k, v in given.items())
        _note(f"method_defaults {named} does not fit this run ({e}); {cfg.method}'s own is used")
    cfg.compile = compile_mode(cfg.compile)  # true/false of older configs: model/off
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
    """Each section's own check, then what spans sections; the message names the key. No float
    setting may be nan or inf (nan passes every ``> 0`` check)."""
    for f in fields(Config):
        v = getattr(cfg, f.name)
        _check(
            not isinstance(v, float) or math.isfinite(v),
            f"{f.name} must be a finite number, got {v}",
        )
    ObjectiveConfig.check(
        cfg, n_views=_n_views(cfg.multi_crop), cutmix=cfg.cutmix, dim=cfg.proj_dim
    )
    for section in (ModelConfig, DataConfig, AugmentConfig, OptimConfig, RunConfig, EvalConfig):
        section.check(cfg)
    _check(
        cfg.symmetry != "asym2x" or not cfg.multi_crop,
        "symmetry=asym2x takes neither multi_crop nor cutmix",
    )
    spec = get_method(cfg.method)
    learned = [n for n, m in METHODS.items() if m.needs.has_predictor]
    _check(
        spec.needs.has_predictor or (cfg.predictor_lr_scale == 1 and not cfg.predictor_fixed_lr),
        f"predictor_lr_scale and predictor_fixed_lr apply to methods with a learned predictor "
        f"({', '.join(learned)}), not {cfg.method}; remove them",
    )


def check_config(cfg: Config) -> Config:
    """A checked copy of ``cfg`` as :func:`build_config` makes it (types, values, the warm-up
    resolved), for a ``Config`` built directly; the caller's is left as it was."""
    return build_config(to_dict(cfg))


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
