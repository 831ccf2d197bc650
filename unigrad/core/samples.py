"""Sample sets behind the negative gradient (paper Table 1): batch, memory bank, EMA matrix F.

The batch set needs no state (it is the gathered current batch). The other two are modules
whose state lives in buffers, so ``state_dict()`` carries them into checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unigrad.core import dist


class MemoryBank(nn.Module):
    """FIFO queue of past target embeddings, V_bank (MoCo).

    Buffers: ``queue`` [K, C], ``ptr`` (next row to write), ``filled`` (valid rows, <= K).
    Until the queue is full only the written rows are used as negatives.
    """

    queue: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor
    pending: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"memory bank size must be >= 1, got {size}")
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        # keys staged by a step, enqueued by flush() once its backward no longer needs the queue
        self.register_buffer("pending", torch.zeros(0, dim))
        # host-side copies of ptr/filled: reading the buffers would sync with the GPU each step
        self._ptr = self._filled = 0
        self.register_load_state_dict_post_hook(lambda m, _: m._sync_host())

    def _sync_host(self) -> None:
        self._ptr, self._filled = int(self.ptr), int(self.filled)

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    def negatives(self) -> torch.Tensor:
        """The valid rows, [min(filled, K), C] (a view: clone before an in-place push)."""
        return self.queue if self._filled >= self.size else self.queue[: self._filled]

    def stage(self, keys: torch.Tensor) -> None:
        """Hold keys [M, C] until :meth:`flush` (they are state: ``pending`` in the state dict).
        Call it after :meth:`flush` (the objective does); staged keys are replaced."""
        self.pending = keys.detach()

    def flush(self) -> None:
        """Enqueue the staged keys, if any."""
        if self.pending.shape[0]:
            self.push(self.pending)
            self.pending = self.pending.new_zeros(0, self.queue.shape[1])

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        key = prefix + "pending"
        if key in state_dict:  # a state dict's staged keys may have any count
            self.pending = torch.empty_like(state_dict[key], device=self.queue.device)
        else:  # written before staged keys were state: none
            state_dict[key] = self.queue.new_zeros(0, self.queue.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args)

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue keys [M, C] (already gathered over ranks), overwriting the oldest rows."""
        keys = keys.detach().to(self.queue.dtype)
        k = self.size
        if keys.shape[0] > k:  # only the newest K survive
            keys = keys[-k:]
        m = keys.shape[0]
        idx = (torch.arange(m, device=self.queue.device) + self._ptr) % k
        self.queue.index_copy_(0, idx, keys.to(self.queue.device))
        self._ptr, self._filled = (self._ptr + m) % k, min(self._filled + m, k)
        self.ptr.fill_(self._ptr)
        self.filled.fill_(self._filled)


def batch_correlation(embeddings: list[torch.Tensor]) -> torch.Tensor:
    """Mean of u u^T over all rows of all given views: sum_i U_i^T U_i / sum_i N_i -> [C, C]."""
    u = torch.cat(embeddings)  # one [C, sum N] x [sum N, C] product
    return u.T @ u / u.shape[0]


class CorrelationEMA(nn.Module):
    """F = sum_v rho_v v v^T, the EMA of the embedding correlation matrix (V_infinity).

    Paper eq. 14 / algorithm 6: F_t = rho * F_{t-1} + (1 - rho) * mean_batch(u u^T), with the
    batch matrix all-reduced (mean) over ranks. The first batch initialises F (not zeros).
    Buffers: ``F`` [C, C], ``initialized`` (bool).
    """

    F: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, dim: int, rho: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"rho must be in [0, 1), got {rho}")
        self.rho = rho
        self.register_buffer("F", torch.zeros(dim, dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._initialized = False  # host-side copy (no GPU sync per step)
        self.register_load_state_dict_post_hook(
            lambda m, _: setattr(m, "_initialized", bool(m.initialized))
        )

    @torch.no_grad()
    def update(self, embeddings: list[torch.Tensor], all_reduce: bool = True) -> torch.Tensor:
        """Fold the current batch [N, C] (per view) into F; returns the new F."""
        batch = batch_correlation([u.detach() for u in embeddings])
        if all_reduce:
            batch = dist.all_reduce_mean(batch)
        batch = batch.to(self.F.dtype)
        if self._initialized:
            self.F.mul_(self.rho).add_(batch, alpha=1.0 - self.rho)
        else:
            self.F.copy_(batch)
            self.initialized.fill_(True)
            self._initialized = True
        return self.F


def directpred_predictor(
    F: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DirectPred's predictor from F (eq. 6 / 23) by symmetric eigendecomposition.

    W_h = U (Lambda_F^1/2 + eps * lambda_max I) U^T, lambda_max the largest eigenvalue of F.
    Negative eigenvalues from round-off are clipped to 0.

    Returns:
        (W_h [C, C], F^1/2 [C, C], lambda_max scalar), in F's dtype.
    """
    evals, evecs = torch.linalg.eigh(F.double())
    evals = evals.clamp_min(0)
    lam_max = evals.max()
    sqrt_f = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    w_h = sqrt_f + eps * lam_max * torch.eye(F.shape[0], dtype=torch.float64, device=F.device)
    return w_h.to(F.dtype), sqrt_f.to(F.dtype), lam_max.to(F.dtype)
