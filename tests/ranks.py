"""Runs a function on 2 gloo processes and returns what each rank gave (the tests' "2 ranks
equal 1 process" checks share this)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from unigrad.core.dist import cleanup


def _worker(rank: int, world: int, tmp: str, fn: Callable[[int, int], Any]) -> None:
    tdist.init_process_group("gloo", init_method=f"file://{tmp}/rdv", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        gathered: list[Any] = [None] * world
        tdist.all_gather_object(gathered, fn(rank, world))
        if rank == 0:
            torch.save(gathered, f"{tmp}/out.pt")
    finally:
        cleanup()  # the group and its threads end before the process does


def on_ranks(fn: Callable[[int, int], Any], tmp: str | Path, world: int = 2) -> list[Any]:
    """``[fn(0, world), ..., fn(world - 1, world)]``, each computed in its own process inside
    a gloo process group (``fn`` must be a module-level function: it is pickled by name)."""
    mp.spawn(_worker, args=(world, str(tmp), fn), nprocs=world, join=True)
    return torch.load(Path(tmp) / "out.pt", weights_only=True)
