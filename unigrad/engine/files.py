"""Writing files: atomically (a temporary file beside the target, fsync'ed, renamed over it),
and an output that cannot be written (a read-only or missing location, a file in the way, a
full disk) reported as one :class:`~unigrad.errors.UserError` naming the path and the fix.

A write cut short by a full disk leaves nothing behind: its temporary file is removed, so the
space it took is free again for the next try.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from unigrad.errors import UserError

#: What a full disk (or a full quota) raises.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_error(path: Path, e: OSError, fix: str, needed: int | None = None) -> UserError:
    """The one-line error for ``e``, raised while writing ``path`` (``needed``: its bytes)."""
    if e.errno in NO_SPACE:
        detail = ""
        if needed is not None:  # an atomic write: its temporary file is gone
            free = shutil.disk_usage(_existing(path)).free
            detail = f" (it needs {_mb(needed)}, {_mb(free)} free; the partial file was removed)"
        return UserError(
            f"no space left on the device for {path}{detail}; free some space, then {fix}"
        )
    return UserError(f"cannot write {path} ({e.strerror or e}); {fix}")


@contextmanager
def writing(path: Path, fix: str) -> Iterator[None]:
    """Turn an ``OSError`` of the block, which writes ``path``, into :func:`write_error`'s."""
    try:
        yield
    except OSError as e:
        raise write_error(Path(e.filename or path), e, fix) from None


def atomic_write(
    path: Path, data: bytes | memoryview, fix: str, keep_previous: Path | None = None
) -> None:
    """Write ``data`` to ``path`` atomically; the old file is moved to ``keep_previous`` first
    when given. An OSError (e.g. a full disk) removes the temporary file and becomes a
    UserError naming ``path``, the bytes needed and ``fix``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):  # e.g. nothing to remove on a read-only filesystem
            tmp.unlink(missing_ok=True)
        raise write_error(path, e, fix, needed=len(data)) from None


def check_writable(path: str | Path, flag: str, folder: bool) -> None:
    """Refuse, before any work, an output ``path`` (a ``folder`` or a file, given as ``flag``)
    that cannot be created: a file where a folder must be, or a location this process may not
    write to (e.g. a read-only filesystem)."""
    path = Path(path)
    base = _existing(path if folder else path.parent)
    if not base.is_dir():
        raise UserError(f"{flag} {path}: {base} is a file, not a folder; choose another {flag}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {path}: {base} is not writable (read-only or no permission); choose "
            f"another {flag}"
        )
