"""STEGO's segmentation head and its two probes (``unseg docs methods``).

Submodule and parameter names follow the authors' checkpoints, so a state dict moves
between them by a prefix only: the head's ``cluster1.0``, ``cluster2.0``, ``cluster2.2``
sit under ``net.``; the probes are ``cluster_probe.clusters`` and ``linear_probe.{weight,bias}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StegoHead", "ClusterProbe", "LinearProbe", "CLUSTER_ALPHA"]

CLUSTER_ALPHA = 2.0  # temperature of the cluster probe's evaluation log-softmax (STEGO's eval script)


class StegoHead(nn.Module):
    """Features (B, D, h, w) -> code (B, dim, h, w): a linear 1x1 branch plus a 1x1 MLP branch.

    Each branch sees its own Dropout2d draw of the features, as in the authors' model.
    """

    def __init__(self, dim_in: int, dim: int = 70, dropout: float = 0.1) -> None:
        super().__init__()
        self.dim_in, self.dim = dim_in, dim
        self.dropout = nn.Dropout2d(dropout)
        self.cluster1 = nn.Sequential(nn.Conv2d(dim_in, dim, 1))
        self.cluster2 = nn.Sequential(nn.Conv2d(dim_in, dim_in, 1), nn.ReLU(), nn.Conv2d(dim_in, dim, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.cluster1(self.dropout(feats)) + self.cluster2(self.dropout(feats))


class ClusterProbe(nn.Module):
    """``n_clusters`` learnable centroids scored by cosine similarity to each code vector.

    Trained (on detached codes) to raise the similarity of every code to its nearest
    centroid: a k-means-like objective that follows the head as it trains.
    """

    def __init__(self, dim: int, n_clusters: int) -> None:
        super().__init__()
        self.clusters = nn.Parameter(torch.randn(n_clusters, dim))

    @property
    def n_clusters(self) -> int:
        return self.clusters.shape[0]

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        """(B, n_clusters, h, w) cosine similarities."""
        return torch.einsum("bchw,kc->bkhw", F.normalize(code, dim=1), F.normalize(self.clusters, dim=1))

    def loss(self, code: torch.Tensor) -> torch.Tensor:
        """Minus the mean similarity of each code to its argmax-assigned centroid."""
        return -self(code).max(dim=1).values.mean()

    def log_probs(self, code: torch.Tensor, alpha: float = CLUSTER_ALPHA) -> torch.Tensor:
        """log_softmax(alpha * similarity) over clusters: the scores evaluation and a CRF use."""
        return F.log_softmax(alpha * self(code), dim=1)


class LinearProbe(nn.Conv2d):
    """Conv1x1(dim, n_classes) on detached codes: the supervised read-out of what the code holds."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__(dim, n_classes, 1)
