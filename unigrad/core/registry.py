"""The method registry as pure data: name -> :class:`~unigrad.core.spec.MethodSpec`.

The core owns the dictionary and knows no method: :mod:`unigrad.methods` fills it (one file per
family, each listing its specs in ``METHODS``) when ``unigrad`` is imported, and user code adds
its own with :func:`register`. ``Objective("simclr", ...)`` looks names up here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unigrad.core.spec import MethodSpec

METHODS: dict[str, MethodSpec] = {}

#: Derivations a method file adds to ``unigrad check-gradients`` (its ``DERIVATIONS`` list):
#: each takes the synthetic float64 batch and returns rows (name, method, kind, autograd
#: gradient, closed form, note).
DERIVATIONS: list[Callable[[Any], list[tuple[Any, ...]]]] = []


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the registry (CLI, grids, ``Objective(name)`` then know it).

    A name that exists is refused unless ``replace=True``. Returns ``spec``.
    """
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register takes a MethodSpec, got {type(spec).__name__}")
    if spec.name in METHODS and not replace:
        raise ValueError(f"method {spec.name!r} is already registered (pass replace=True)")
    METHODS[spec.name] = spec
    return spec


def register_derivation(fn: Callable[[Any], list[tuple[Any, ...]]]) -> None:
    """Add a method's rows to ``unigrad check-gradients`` (once per function)."""
    if fn not in DERIVATIONS:
        DERIVATIONS.append(fn)


def get_method(name: str) -> MethodSpec:
    """The registered :class:`~unigrad.core.spec.MethodSpec` called ``name`` (KeyError if none)."""
    if name not in METHODS:
        known = ", ".join(METHODS) or "none (import unigrad to load the built-in methods)"
        raise KeyError(f"unknown method {name!r}; choose one of {known}")
    return METHODS[name]
