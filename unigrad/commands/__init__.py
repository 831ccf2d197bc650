"""Sub-commands beyond the core ones: every module in this package registers its own with
:func:`unigrad.cli.command` when imported."""

import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_m.name}")
