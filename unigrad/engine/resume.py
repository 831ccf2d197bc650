"""Resume and run-directory guards: the lock, the finiteness rule for checkpoints, and the choice
of the checkpoint a run continues from.

* ``RUN/.lock``: an OS lock held for the life of the run (released when the process ends, however
  it ends) with the holder's PID; a second writer is refused naming it.
* No checkpoint is ever written with non-finite weights, optimiser or objective state
  (:func:`all_finite`); after a divergence :func:`good_checkpoint` names one that really is good.
* ``--resume`` continues from the newest readable checkpoint of the same architecture and method
  (:data:`ARCH_KEYS`) and the same schedules (:func:`check_same_schedules`); it refuses when
  checkpoints exist but none can be read. A torchrun restart
  is a resume (:func:`~unigrad.core.dist.restart_count`).
* Distributed: rank 0 alone takes the lock and writes, every rank reads; the ranks agree on the
  outcome of each step here (one rank's error is every rank's) and must all see rank 0's files,
  so ``--out`` must be on a filesystem every node mounts (:func:`check_shared`).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from unigrad.config import keys_tagged, save_config
from unigrad.core import dist
from unigrad.engine import checkpoint as ckpt
from unigrad.engine.files import atomic_write
from unigrad.engine.optim_config import check_same_schedules
from unigrad.engine.runlog import RunLog
from unigrad.errors import UserError

#: Config keys that must match for ``--resume`` to continue a run (architecture and method):
#: the fields tagged ``arch`` in their section.
ARCH_KEYS = keys_tagged("arch")


def _float_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj.detach()] if obj.is_floating_point() and obj.numel() else []
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _float_tensors(v)]
    return []


def all_finite(state: Any, across_ranks: bool = True) -> bool:
    """Whether every floating tensor in a (nested) state dict is finite (on every rank, unless
    ``across_ranks`` is False: then no collective, for a file every rank reads alike).

    One pass: x * 0 is 0 for finite x and NaN for inf/NaN, so the summed norms of the zeroed
    tensors are 0 exactly when everything is finite (no overflow from large finite values).
    """
    tensors = _float_tensors(state)
    flag = torch.zeros((), device=tensors[0].device if tensors else "cpu")
    if tensors:
        norms = torch._foreach_norm(torch._foreach_mul(tensors, 0.0))
        flag = torch.stack([n.float().to(flag.device) for n in norms]).sum()
    if across_ranks:
        flag = dist.all_reduce(flag)  # on the backend's device (a CUDA tensor under NCCL)
    return bool(torch.isfinite(flag))


def good_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that loads, validates and holds only finite values
    (read by each rank alone: no collective, so a rank may call it on its way out)."""
    for p in ckpt.candidates(run_dir) if run_dir.is_dir() else []:
        try:
            if all_finite(ckpt.load_checkpoint(p), across_ranks=False):
                return p
        except ckpt.CheckpointError:
            continue
    return None


def _take(f: Any, out: Path) -> None:
    """flock ``f`` (the open ``out/.lock``), or close it and raise naming the PID inside."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise UserError(
            f"{out} is in use by another unigrad process (PID {pid}); wait for it to end, "
            "stop it, or choose another --out"
        ) from None


def refuse_if_locked(out: Path) -> None:
    """A UserError naming the holder if another process holds ``out/.lock``; writes nothing
    (so a run in use is refused before any work, and :func:`lock_run_dir` takes it later)."""
    if (out / ".lock").is_file():
        with open(out / ".lock") as f:
            _take(f, out)  # released when the file closes


def lock_run_dir(out: Path) -> Any:
    """Take ``out/.lock`` (an OS lock, released when the process ends, however it ends) and
    write this process's PID into it; a UserError naming the holder if another process has it."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ".lock", "a+")  # noqa: SIM115 - held for the life of the run
    _take(f, out)
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    os.fsync(f.fileno())  # other nodes read it (check_shared)
    return f


def find_resume_state(
    out: Path, cfg: Any, schedule_steps: int | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of ``out`` and its state, checked against ``cfg``'s
    architecture and (given ``schedule_steps``) its schedules
    (:func:`check_same_schedules`); None when ``out`` holds no checkpoint yet (a fresh start,
    said on stderr)."""
    found = ckpt.latest_good(
        out, warn=lambda m: print(m, file=sys.stderr) if dist.is_main() else None
    )
    if found is None:
        bad = ckpt.candidates(out) if out.is_dir() else []
        if bad:
            raise UserError(
                f"--resume: no checkpoint in {out} can be read ("
                f"{', '.join(p.name for p in bad)}); nothing was changed. Start the run "
                "elsewhere with another --out, or delete these files to start over here"
            )
        if dist.is_main():
            print(f"--resume: no checkpoint in {out} yet; starting from scratch", file=sys.stderr)
        return None
    path, state = found
    old = state.get("config", {})
    diff = [
        f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}"
        for k in ARCH_KEYS
        if old.get(k) != getattr(cfg, k)
    ]
    if diff:
        hint = "resume with the same settings or start a new --out"
        if old.get("backbone") == "custom" and cfg.backbone != "custom":
            hint = "it trained your own backbone module: pass it again, Trainer(cfg, backbone=...)"
        raise UserError(f"{path} was written by a different run ({'; '.join(diff)}); {hint}")
    if schedule_steps is not None:
        check_same_schedules(path, state, cfg, schedule_steps)
    return path, state


def load_resume_state(
    out: Path,
    cfg: Any,
    parts: Any,
    schedule_steps: int | None = None,
    restore: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Path | None, int]:
    """Load the newest good checkpoint of ``out`` into ``parts`` (:func:`find_resume_state`)
    and hand its payload to ``restore`` (the callbacks' states); returns (its path, its step),
    or (None, 0) for a fresh start. Every rank reads it; in a distributed run an error on one
    rank is the same error on all, and every rank must have found the same checkpoint (else
    ``--out`` is not on a filesystem all nodes share)."""
    path, step = None, 0
    with dist.agreed_errors():
        found = find_resume_state(out, cfg, schedule_steps)
        if found is not None:
            path, state = found
            try:
                step = parts.load_state_dict(state)
                if restore is not None:
                    restore(state)
            except (RuntimeError, KeyError, ValueError) as e:
                msg = str(e).splitlines()[0]
                raise UserError(f"{path} does not match this model: {msg}") from None
    seen = dist.gather_object((str(path) if path else "no checkpoint", step))
    if any(s != seen[0] for s in seen):
        found_by = "; ".join(f"rank {r}: {p} at step {n}" for r, (p, n) in enumerate(seen))
        raise UserError(
            f"the ranks found different checkpoints in --out {out} ({found_by}); put --out on "
            "a filesystem every node mounts"
        )
    return path, step


def open_run(out: Path, cfg: Any, *, resumed: bool, step: int, skipped: int) -> tuple[Any, RunLog]:
    """Open the run directory for a run at ``step``: take the lock (rank 0), then the run log and
    config.yaml of a fresh run, or keep a resumed run's log up to ``step``; a fresh run in a
    directory that holds checkpoints is refused. Returns (lock or None, run log); on an error
    the lock is released. In a distributed run an error on one rank is the same error on all
    (:func:`~unigrad.core.dist.agreed_errors`) and every rank must see rank 0's lock
    (:func:`check_shared`)."""
    lock = log = None
    try:
        with dist.agreed_errors():
            lock = lock_run_dir(out) if dist.is_main() else None
            if not resumed and ckpt.candidates(out):
                raise UserError(
                    f"{out} already holds a run (*.ckpt); pass --resume to continue it or "
                    "choose another --out"
                )
            log = RunLog(out, cfg.tensorboard)
        check_shared(out)
    except BaseException:
        for f in (log, lock):
            if f is not None:
                f.close()
        raise
    if dist.is_main():  # a checkpoint write cut short (the lock says no writer is left)
        for tmp in out.glob(".*.ckpt.tmp*"):
            tmp.unlink(missing_ok=True)
    if skipped and dist.is_main():
        print(
            f"warning: {skipped} unreadable training images skipped "
            "(bad_images=skip; logged as data/skipped_images)",
            file=sys.stderr,
        )
    log.truncate_after(step)
    saved = out / "config.yaml"
    stored = yaml.safe_load(saved.read_text()) if resumed and saved.is_file() else None
    if isinstance(stored, dict) and stored.get("max_steps") != cfg.max_steps and dist.is_main():
        save_config(cfg, saved)  # where the run stops now (--max-steps of the resume)
    if not resumed:
        if dist.is_main():
            save_config(cfg, saved)
        log.log(0, 0.0, {"data/skipped_images": float(skipped)})
    return lock, log


def set_aside_unreadable(out: Path, resumed_from: Path) -> list[Path]:
    """After a resume that fell back past unreadable checkpoints (rank 0, under the lock): each
    one newer than ``resumed_from`` is renamed ``NAME.ckpt.corrupt`` (kept for inspection, no
    longer found), and ``last.ckpt``, when it was one, becomes a copy of ``resumed_from``, so the
    run's ``last.ckpt`` loads (kNN, export, the next resume) without a warning. Returns the
    renamed files."""
    moved = []
    for p in ckpt.candidates(out):
        if p == resumed_from:
            break
        try:
            ckpt.load_checkpoint(p)
            continue  # readable (written since): not this function's business
        except ckpt.CheckpointError:
            pass
        aside = p.with_name(p.name + ".corrupt")
        os.replace(p, aside)
        moved.append(aside)
        if p.name == "last.ckpt":
            atomic_write(p, resumed_from.read_bytes(), "free some space, then resume again")
    if moved:
        names = ", ".join(m.name for m in moved)
        print(f"note: unreadable checkpoints set aside as {names}", file=sys.stderr)
    return moved


def check_shared(out: Path) -> None:
    """In a distributed run, refuse unless every rank reads the ``out/.lock`` that rank 0 has
    just written: only rank 0 writes checkpoints and every rank reads them, so ``--out`` must be
    on a filesystem all nodes share."""
    if not dist.is_dist():
        return
    try:
        mine = (out / ".lock").read_text()
    except OSError:
        mine = None
    seen = dist.gather_object((socket.gethostname(), mine))
    blind = [f"rank {r} on {host}" for r, (host, text) in enumerate(seen) if text != seen[0][1]]
    if blind:
        raise UserError(
            f"--out {out} is not shared between the nodes: {', '.join(blind)} cannot see the "
            "lock rank 0 wrote there; put --out on a filesystem every node mounts"
        )
