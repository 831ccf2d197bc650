"""The one exception type for user mistakes: the CLI prints its message (no traceback)."""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(Exception):
    """A problem the user can fix: the message names the problem and the fix.

    ``exit_code`` is what the CLI exits with (2: bad input or usage, 3: training diverged).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        # Raised in a DataLoader worker, it comes back re-created from a message that wraps the
        # worker's traceback ("Caught UserError in DataLoader worker process 0. Original
        # Traceback ... unigrad.errors.UserError: <message>"): keep the message only.
        marker = f"\n{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].rstrip("\n")
        super().__init__(message)
        self.exit_code = exit_code


def optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or refuse in one line with the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'unigrad[{extra}]'"
        ) from None
