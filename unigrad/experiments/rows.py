"""How a form is named in the Table 2 ``row`` column, the same in ``unigrad methods``,
``unigrad compare --dry-run``, ``results.csv`` / ``results.md`` and the spread summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unigrad.core.spec import Form, MethodSpec


def row_label(form: Form, spec: MethodSpec | None = None) -> str:
    """The Table 2 row of ``form``: its letter; without one, its key for a gradient form and
    "-" for a loss form. With ``spec`` (the form's method), the method's default gradient form
    is marked with a trailing "*" (as ``unigrad methods`` lists it)."""
    label = form.row or ("-" if form.kind == "loss" else form.key)
    if spec is not None and form.kind == "grad" and form.key == spec.default_grad:
        label += "*"
    return label
