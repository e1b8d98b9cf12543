"""Standardise + PCA and faiss k-means (SPEC §3): the project's only clustering code.

Leopart's overclustering is StandardScaler -> PCA(50) -> faiss k-means (niter 100, nredo 5);
:class:`StandardPCA` fits the first two from a stream of chunks, so token sets larger than
memory can be read from a memory map.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np

__all__ = ["StandardPCA", "KMeansResult", "kmeans", "assign"]


class StandardPCA:
    """Per-dimension standardisation (population std) followed by PCA to ``dim`` components.

    With ``dim`` >= the input dimension the data is only standardised. Component signs
    are fixed (largest-magnitude loading positive), so a fit is reproducible.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"PCA dim must be >= 1, got {dim}")
        self.dim = dim
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.components_: np.ndarray | None = None  # (dim, D); None when only standardising
        self.explained_variance_: np.ndarray | None = None

    def fit(self, chunks: Iterable[np.ndarray]) -> StandardPCA:
        """One pass over (n_i, D) chunks; per-chunk centred moments are merged (Chan et al.)
        in float64, which stays exact for features far from zero, unlike sum / sum of squares."""
        n, mean, scatter = 0, None, None
        for chunk in chunks:
            x = np.asarray(chunk, dtype=np.float64)
            if x.ndim != 2 or (mean is not None and x.shape[1] != mean.shape[0]):
                expected = "(n, D)" if mean is None else f"(n, {mean.shape[0]})"
                raise ValueError(f"PCA chunk of shape {x.shape} is not {expected}")
            if len(x) == 0:
                continue
            m = x.mean(axis=0)
            xc = x - m
            s = xc.T @ xc
            if mean is None:
                n, mean, scatter = len(x), m, s
                continue
            total = n + len(x)
            delta = m - mean
            scatter = scatter + s + np.outer(delta, delta) * (n * len(x) / total)
            mean = mean + delta * (len(x) / total)
            n = total
        if mean is None:
            raise ValueError("PCA was given no data to fit")
        var = np.diag(scatter) / n
        # sklearn's rule: a variance within rounding error of zero is a constant feature, left unscaled
        eps = np.finfo(np.float64).eps
        constant = var <= n * eps * var + (n * mean * eps) ** 2
        scale = np.where(constant, 1.0, np.sqrt(var))
        self.mean_, self.scale_ = mean, scale
        if self.dim >= len(mean):
            self.components_, self.explained_variance_ = None, var / scale**2
            return self
        cov = scatter / n / np.outer(scale, scale)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1][: self.dim]
        comps = eigvec[:, order].T
        rows = np.arange(self.dim)
        comps *= np.sign(comps[rows, np.abs(comps).argmax(axis=1)])[:, None]
        self.components_, self.explained_variance_ = comps, eigval[order]
        return self

    @property
    def out_dim(self) -> int:
        """Dimension of :meth:`transform`'s output."""
        if self.mean_ is None:
            raise ValueError("StandardPCA is not fitted yet")
        return len(self.mean_) if self.components_ is None else self.dim

    def transform(self, x: np.ndarray) -> np.ndarray:
        """float32 (n, out_dim) projection of (n, D) rows; call it chunk by chunk for large data."""
        if self.mean_ is None:
            raise ValueError("StandardPCA is not fitted yet")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != len(self.mean_):
            raise ValueError(f"input of shape {x.shape} is not (n, {len(self.mean_)})")
        z = (x.astype(np.float32) - self.mean_.astype(np.float32)) / self.scale_.astype(np.float32)
        if self.components_ is None:
            return z
        return z @ self.components_.T.astype(np.float32)


@dataclass
class KMeansResult:
    """``inertia``: summed squared euclidean distance of the points to their centroids."""

    centroids: np.ndarray  # float32 (k, D)
    labels: np.ndarray  # int64 (n,)
    inertia: float


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Contiguous float32 rows scaled to unit L2 norm (all-zero rows stay zero): cosine via inner product."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def _search(x: np.ndarray, centroids: np.ndarray, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, score): squared L2 distance, or inner product when spherical."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(f"points of shape {x.shape} and centroids of shape {centroids.shape} do not fit")
    index = faiss.IndexFlatIP(x.shape[1]) if spherical else faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    score, labels = index.search(x, 1)
    return labels[:, 0].astype(np.int64), score[:, 0]


def assign(x: np.ndarray, centroids: np.ndarray, spherical: bool = False) -> np.ndarray:
    """int64 label of each row's nearest centroid (largest inner product when spherical)."""
    return _search(x, centroids, spherical)[0]


def kmeans(x: np.ndarray, k: int, seed: int, niter: int = 100, nredo: int = 5, spherical: bool = False,
           max_points_per_centroid: int | None = None) -> KMeansResult:
    """faiss k-means (CPU), deterministic given ``seed``; the best of ``nredo`` runs is kept.

    ``spherical``: cosine k-means — rows are L2-normalised, centroids kept on the unit sphere
    and points assigned by inner product. faiss trains on a seeded sample of
    k * ``max_points_per_centroid`` points when there are more (None: faiss's default, 256,
    as in Leopart); labels are always computed for every point.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"k-means input must be (n, D), got shape {x.shape}")
    if not 1 <= k <= len(x):
        raise ValueError(f"cannot make k={k} clusters out of {len(x)} points")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if spherical:
        x = unit_rows(x)
    params = {} if max_points_per_centroid is None else {"max_points_per_centroid": max_points_per_centroid}
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, spherical=spherical, verbose=False,
                      **params)
    km.train(x)
    centroids = km.centroids.copy()
    labels, score = _search(x, centroids, spherical)
    if spherical:  # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c
        inertia = float((x.astype(np.float64) ** 2).sum() + (centroids.astype(np.float64) ** 2).sum(1)[labels].sum()
                        - 2 * score.astype(np.float64).sum())
    else:
        inertia = float(score.astype(np.float64).sum())
    return KMeansResult(centroids=centroids, labels=labels, inertia=inertia)
