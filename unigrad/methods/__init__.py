"""The built-in methods: one module per family, each listing its specs in ``METHODS``.

Importing this package loads every module of it into the registry that the core owns
(:mod:`unigrad.core.registry`: :data:`METHODS`, :func:`register`, :func:`get_method`, re-exported
here), so adding a method is adding a file (or calling :func:`register` from user code); a
module's ``DERIVATIONS`` (functions giving ``unigrad check-gradients`` rows) are registered the
same way. The
order of the table (``unigrad methods``) is the paper's: contrastive, asymmetric, decorrelation,
UniGrad, then the methods added after it.
"""

from __future__ import annotations

import importlib
import pkgutil

from unigrad.core.registry import METHODS, get_method, register, register_derivation

__all__ = ["METHODS", "get_method", "register"]

_PAPER_ORDER = ("contrastive", "asymmetric", "decorrelation", "unigrad")


def _load() -> None:
    names = [m.name for m in pkgutil.iter_modules(__path__)]
    ordered = [n for n in _PAPER_ORDER if n in names] + sorted(set(names) - set(_PAPER_ORDER))
    for name in ordered:
        module = importlib.import_module(f"{__name__}.{name}")
        for spec in getattr(module, "METHODS", []):
            register(spec, replace=METHODS.get(spec.name) is spec)
        for fn in getattr(module, "DERIVATIONS", []):
            register_derivation(fn)


_load()
