"""The method registry: name -> :class:`unigrad.core.spec.MethodSpec`.

Each module of this package is one family and lists its specs in ``METHODS``; every module is
loaded here, so adding a method is adding a file (or calling :func:`register` from user code).
The order of the table (``unigrad methods``) is the paper's: contrastive, asymmetric,
decorrelation, UniGrad, then the methods added after it.
"""

from __future__ import annotations

import importlib
import pkgutil

from unigrad.core.spec import MethodSpec

METHODS: dict[str, MethodSpec] = {}

_PAPER_ORDER = ("contrastive", "asymmetric", "decorrelation", "unigrad")


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the registry (CLI, grids, ``Objective(name)`` then know it)."""
    if spec.name in METHODS and not replace:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered :class:`~unigrad.core.spec.MethodSpec` called ``name`` (KeyError if none)."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def _load() -> None:
    names = [m.name for m in pkgutil.iter_modules(__path__)]
    ordered = [n for n in _PAPER_ORDER if n in names] + sorted(set(names) - set(_PAPER_ORDER))
    for name in ordered:
        for spec in getattr(importlib.import_module(f"{__name__}.{name}"), "METHODS", []):
            register(spec)


_load()
