"""Distributed helpers: each is a no-op (or the identity) in a single process.

Gradient convention. DDP averages parameter gradients over ranks. A loss computed on the
*global* batch must therefore be computed identically on every rank from tensors gathered with
:func:`gather_with_grad`, whose backward sums the incoming gradients over ranks (so DDP's
average of W identical copies gives exactly the single-process gradient). A loss that is a mean
over the *local* samples needs no gather at all. Never ``all_reduce`` a tensor that carries
gradient with the plain (non-autograd) collective: its backward is the identity on each rank,
and after DDP's average the gradient comes out scaled by 1/world_size.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


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


def setup_from_env() -> bool:
    """Initialise the process group when launched by ``torchrun`` (RANK/WORLD_SIZE set).

    Returns True when distributed. Uses NCCL when CUDA is available, gloo otherwise.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
