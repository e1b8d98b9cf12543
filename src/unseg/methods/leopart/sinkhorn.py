"""Sinkhorn-Knopp soft assignments (SwAV / Leopart) and the queue of past teacher embeddings.

Both work the same on one process and under DDP: when ``torch.distributed`` is
initialised, the sums Sinkhorn-Knopp normalises by are all-reduced, so N processes with
B rows each get exactly the assignments of one process with all N*B rows; each keeps
its own queue of ``length / N`` embeddings.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["sinkhorn", "EmbeddingQueue"]


def _all_reduce(x: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=op)
    return x


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """(N, K) prototype scores -> (N, K) soft assignments; every row sums to 1.

    The plan P = exp(scores / eps), normalised to total mass 1, is alternately rescaled so
    that each prototype (column) carries 1/K of the mass and each sample (row) 1/N; after
    the last iteration the rows sum to exactly 1/N and the columns to 1/K up to
    convergence. The result is N * P. N and the sums are global across processes.
    """
    scores = scores.float()
    top = _all_reduce(scores.max().clone(), dist.ReduceOp.MAX)  # a shared shift: exp never overflows
    q = torch.exp((scores - top) / eps)
    q /= _all_reduce(q.sum())
    rows = _all_reduce(torch.tensor(float(len(q)), device=q.device))
    prototypes = q.shape[1]
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=0, keepdim=True)) * prototypes
        q /= q.sum(dim=1, keepdim=True) * rows
    return q * rows


class EmbeddingQueue:
    """One FIFO of past teacher embeddings per assignment crop, newest first (Leopart's queue).

    ``push`` stores up to ``max_push`` randomly chosen rows; the queue is used as a prefix
    of the Sinkhorn rows only once ``full``. A plain object rather than module buffers:
    DDP would broadcast rank 0's buffers over every rank's own queue.
    """

    def __init__(self, num_queues: int, length: int, dim: int, device: torch.device | str = "cpu") -> None:
        if length < 1:
            raise ValueError(f"queue length {length} must be positive")
        self.embeddings = torch.zeros(num_queues, length, dim, device=device)
        self.filled = torch.zeros(num_queues, dtype=torch.long)

    @property
    def length(self) -> int:
        return self.embeddings.shape[1]

    def full(self, i: int) -> bool:
        return int(self.filled[i]) >= self.length

    @torch.no_grad()
    def push(self, i: int, rows: torch.Tensor, max_push: int) -> None:
        """Put up to ``max_push`` random rows of ``rows`` (n, dim) in front of queue ``i``; the oldest fall out."""
        n = min(max_push, len(rows), self.length)
        if n == 0:
            return
        picked = rows[torch.randperm(len(rows), device=rows.device)[:n]]
        queue = self.embeddings[i]
        queue[n:] = queue[:-n].clone()
        queue[:n] = picked.to(queue.dtype)
        self.filled[i] = min(int(self.filled[i]) + n, self.length)

    def to(self, device: torch.device | str) -> EmbeddingQueue:
        self.embeddings = self.embeddings.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"embeddings": self.embeddings, "filled": self.filled}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["embeddings"].shape != self.embeddings.shape:
            raise ValueError(
                f"queue of shape {tuple(state['embeddings'].shape)} does not fit {tuple(self.embeddings.shape)}"
            )
        self.embeddings.copy_(state["embeddings"])
        self.filled.copy_(state["filled"])
