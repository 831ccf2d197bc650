"""Checkpoints: atomic writes, integrity check, safe loading, fallback to the last good one.

Format: a ``torch.save`` dict (loadable by plain ``torch.load(..., weights_only=True)``) with
``format`` = "unigrad", ``version``, and ``crc32`` over every tensor's bytes and the non-tensor
content, so a truncated or corrupted file is detected on load. Writes go to a temporary file in
the same directory, are flushed and fsync'ed, then renamed over the old file; the previous file
is kept as ``*.prev.ckpt`` until the new one is in place.

Loading always uses ``weights_only=True``: a checkpoint can only hold tensors and plain Python
containers/scalars, so a file from a stranger cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import torch

from unigrad.engine.files import atomic_write
from unigrad.errors import UserError

FORMAT = "unigrad"
VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that cannot be used (missing, truncated, corrupt, unsafe, incompatible)."""


def _crc(obj: Any, crc: int = 0) -> int:
    """CRC-32 over a nested structure of tensors, containers and scalars (deterministic order)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8) if t.numel() else t
        crc = zlib.crc32(str((t.dtype, tuple(t.shape))).encode(), crc)
        return zlib.crc32(data.numpy().tobytes() if t.numel() else b"", crc)
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            crc = _crc(obj[k], zlib.crc32(str(k).encode(), crc))
        return crc
    if isinstance(obj, (list, tuple)):
        for v in obj:
            crc = _crc(v, crc)
        return zlib.crc32(str(len(obj)).encode(), crc)
    return zlib.crc32(repr(obj).encode(), crc)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform dependent
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    payload: dict[str, Any],
    path: str | Path,
    keep_previous: bool = True,
    fix: str = "write the checkpoint again",
) -> Path:
    """Atomically write ``payload`` (tensors and plain types only) to ``path``.

    A write that fails (a full disk, a read-only location) removes its temporary file and
    raises a UserError naming ``path``, the space needed and ``fix``."""
    path = Path(path)
    body = {k: v for k, v in payload.items() if k not in ("format", "version", "crc32")}
    record = {"format": FORMAT, "version": VERSION, "crc32": _crc(body), **body}
    buf = io.BytesIO()
    torch.save(record, buf)
    previous = previous_path(path) if keep_previous else None
    atomic_write(path, buf.getbuffer(), fix, keep_previous=previous)
    _fsync_dir(path.parent)
    return path


def previous_path(path: Path) -> Path:
    return path.with_name(path.name.replace(".ckpt", "") + ".prev.ckpt")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; raises :class:`CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it contains objects other than tensors and plain "
            f"Python values (a pickle that could run code). Details: {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # truncated zip, random bytes, ...
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'unreadable'})"
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a unigrad checkpoint")
    if record.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {record.get('version')}; this unigrad reads "
            f"version {VERSION}"
        )
    body = {k: v for k, v in record.items() if k not in ("format", "version", "crc32")}
    if _crc(body) != record.get("crc32"):
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch)")
    return body


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run, newest first (by modification time)."""
    files = [p for p in run_dir.glob("*.ckpt") if not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def latest_good(run_dir: Path, warn: Any = print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``run_dir`` that loads and validates; reports the bad ones."""
    for p in candidates(run_dir):
        try:
            return p, load_checkpoint(p)
        except CheckpointError as e:
            warn(f"warning: skipping {p}: {e}")
    return None
