"""The one exception type for user mistakes: the CLI prints its message (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: the message names the problem and the fix.

    ``exit_code`` is what the CLI exits with (2: bad input or usage, 3: training diverged).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
