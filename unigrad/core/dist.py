"""Distributed helpers: each is a no-op (or the identity) in a single process.

Gradient convention. DDP averages parameter gradients over ranks. A loss computed on the
*global* batch must therefore be computed identically on every rank from tensors gathered with
:func:`gather_with_grad`, whose backward sums the incoming gradients over ranks (so DDP's
average of W identical copies gives exactly the single-process gradient). A loss that is a mean
over the *local* samples needs no gather at all. Never ``all_reduce`` a tensor that carries
gradient with the plain (non-autograd) collective: its backward is the identity on each rank,
and after DDP's average the gradient comes out scaled by 1/world_size.

Agreement. A decision that ends the run (a user error, a stop signal, a non-finite value) must be
taken by every rank at the same point, or the ranks that go on wait forever in a collective the
others never join: :func:`agreed_errors` turns an error on one rank into the same error on all,
:func:`any_rank` agrees on a flag. Collective tensors live on :func:`collective_device` (the GPU
under NCCL, the CPU under gloo).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch.distributed.rendezvous import rendezvous


def is_dist() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main() -> bool:
    """Only rank 0 writes files and prints progress."""
    return rank() == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [N, ...] from all ranks into [W*N, ...], keeping autograd.

    The backward pass sums the gradient over ranks and returns each rank its own slice.
    """
    if not is_dist():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [N, ...] from all ranks into [W*N, ...], detached (negatives, keys)."""
    if not is_dist():
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a detached tensor over ranks (the correlation matrix F, statistics)."""
    if not is_dist():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


@torch.no_grad()
def average_gradients(params: list[torch.Tensor]) -> None:
    """Replace the gradient of each of ``params`` by its mean over ranks, in one collective,
    as DDP does for the model's: for parameters outside DDP (a term's learned temperature or
    prototypes, ``Term.modules``). A parameter without a gradient on this rank counts as a zero
    gradient (and gets one), so every rank takes part with the same shapes. A no-op alone."""
    if not is_dist() or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    flat = all_reduce(flat) / world_size()
    for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad.copy_(g.view_as(p))


@torch.no_grad()
def broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` with rank 0's values (a part built outside DDP starts equal on
    every rank, as DDP makes the model's). A no-op alone."""
    if not is_dist():
        return
    for t in tensors:
        y = t.detach().to(collective_device(), copy=True)
        dist.broadcast(y, src=0)
        t.copy_(y.to(t.device))


@torch.no_grad()
def gather_strided(x: torch.Tensor, n: int) -> torch.Tensor:
    """Undo a strided sharding: rank ``r`` holds items ``r, r + W, r + 2W, ...`` of ``n`` as
    ``x`` [ceil((n - r) / W), ...]; returns all ``n`` items in order, [n, ...], on every rank
    (shards padded to one length for the all_gather, the padding dropped)."""
    if not is_dist():
        return x.detach()
    w = world_size()
    per = -(-n // w)
    padded = x.new_zeros((per, *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.stack(parts, 1).reshape(per * w, *x.shape[1:])[:n]


def local_slice(n_local: int) -> slice:
    """Rows of a gathered [W*N, ...] tensor that belong to this rank."""
    r = rank()
    return slice(r * n_local, (r + 1) * n_local)


def restart_count() -> int:
    """How many times torchrun (with ``max_restarts``) has restarted this worker group (0: first
    start, or not under torchrun). A restart continues the run: it implies ``--resume``."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def setup_from_env(device: str = "auto") -> bool:
    """Initialise the process group when launched by ``torchrun`` (RANK/WORLD_SIZE set).

    Returns True when distributed. The backend follows the configured ``device`` (``auto``,
    ``cpu`` or ``cuda``): NCCL when it resolves to CUDA, gloo on the CPU.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    if not dist.is_initialized():
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        backend = "nccl" if cuda and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # torchrun's static rendezvous (a master port) keeps one store across restarts: without
        # a key prefix per restart, a restarted group reads its predecessor's addresses
        store, r, w = next(rendezvous("env://"))
        store = dist.PrefixStore(f"unigrad/restart-{restart_count()}", store)
        dist.init_process_group(backend=backend, store=store, rank=r, world_size=w)
    return True


def collective_device() -> torch.device:
    """Where tensors for collectives must live: the current GPU under NCCL, else the CPU."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``x`` (any shape, any device) reduced over ranks (``sum`` or ``max``), on ``x``'s
    device; moved to :func:`collective_device` for the collective. The identity alone."""
    if not is_dist():
        return x
    y = x.detach().to(collective_device(), copy=True)
    dist.all_reduce(y, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return y.to(x.device)


def any_rank(flag: bool | int | torch.Tensor) -> int:
    """The largest of ``flag`` (a bool, an int or a 0-d tensor) over ranks, as an int: one
    small collective and one host read. Every rank must call it at the same point."""
    t = flag if isinstance(flag, torch.Tensor) else torch.tensor(int(flag))
    return int(all_reduce(t.to(torch.int64), "max"))


def gather_object(obj: Any) -> list[Any]:
    """``obj`` (picklable) from every rank, in rank order; ``[obj]`` alone."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def agreed_errors() -> Iterator[None]:
    """Run a block on every rank and agree on its outcome: when it raised on any rank, every
    rank raises (the first failing rank's :class:`~unigrad.errors.UserError` message, the same
    on all), so no rank goes on into a collective that a failed one will never join.

    The block must not run collectives itself (a rank that failed before one would leave the
    others waiting in it). A failure that is not a UserError keeps its traceback on its own
    rank; the others stop with a one-line UserError naming it.
    """
    if not is_dist():
        yield
        return
    from unigrad.errors import UserError

    failure: Exception | None = None
    try:
        yield
    except Exception as e:  # agreed below, then raised again
        failure = e
    mine = None
    if failure is not None:
        user = isinstance(failure, UserError)
        text = str(failure) if user else f"{type(failure).__name__}: {failure}"
        mine = (text.splitlines()[0] if text else "", getattr(failure, "exit_code", 1), user)
    outcomes = gather_object(mine)
    first = next(((r, o) for r, o in enumerate(outcomes) if o is not None), None)
    if first is None:
        return
    r, (text, code, user) = first
    if failure is not None and r == rank():
        raise failure
    if user:
        raise UserError(text, exit_code=code) from None
    raise UserError(f"rank {r} failed ({text}); see its traceback", exit_code=1) from None


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    """End the process group and its threads, while the interpreter is whole.

    Call it last, once the objects that hold the group (a trainer and its DDP model) are
    dropped: ``destroy_process_group`` leaves the group alive while anything refers to it, and a
    trainer sits in reference cycles that only the garbage collector frees. Left to the
    collection at interpreter exit, a gloo worker thread can still be releasing its last
    collective's tensors then; it needs the GIL to do so, which CPython refuses a thread during
    finalisation, and the process aborts ("terminate called without an active exception",
    SIGABRT; pytorch#190489). Collecting here ends the group's threads first. The CLI calls it
    after every command.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.destroy_process_group()
    if "torch._dynamo" in sys.modules:
        _release_compiled_graphs()
    gc.collect()


def _release_compiled_graphs() -> None:
    """Drop torch.compile's graphs, and with them what they traced (DDP, the process group).

    Dynamo keeps each graph as a global of the compiled function's module, to be removed when
    the code compiled for it dies; in torch 2.11-2.14 some of that code outlives
    ``torch._dynamo.reset()``, so the removals are run here (a later compile starts afresh).
    """
    torch._dynamo.reset()
    try:  # internal: a torch without it has no hooks to run (the torchrun tests would tell)
        manager = torch._dynamo.utils.CleanupManager.instance
        pending = list(manager.values.values())
    except AttributeError:
        return
    for hooks in pending:
        for hook in hooks:
            with suppress(KeyError):  # torch 2.11 deletes; a name already gone is fine
                hook()
    manager.clear()
