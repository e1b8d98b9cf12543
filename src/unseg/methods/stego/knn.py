"""Image-level nearest neighbours for STEGO's inter-image (kNN) correspondence pairs (``unseg docs methods``).

Each image gets a global descriptor, the L2-normalised spatial mean of its backbone
features, and its top-k images by cosine similarity (index 0 is the image itself; the
loss draws a positive from neighbours 1..7). STEGO computes the descriptor at 224 px
(resize + center crop); here it is taken from the feature cache the head trains on, at
that cache's input size, so the neighbours follow the exact features the loss uses and
no second extraction is needed.

The table is stored beside the features as ``knn-{k}.npy`` and reused. Memory stays
O(N*k + N*D): descriptors are streamed out of the memory-mapped cache, and faiss
searches the flat index one query block at a time, so no N x N matrix ever exists.
Exact search costs N^2 (about 34 s at 100k images on 2 cores); above ``EXACT_MAX``
images an approximate HNSW index takes over (:func:`nearest_neighbours`).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from ...errors import CacheError, SettingError
from ...features.cache import FeatureCache
from ...io import save_npy

__all__ = ["KNN_K", "global_descriptors", "nearest_neighbours", "knn_indices", "load_knn", "knn_path"]

KNN_K = 30
"""Nearest neighbours per training image in STEGO's kNN table (the authors' setting)."""


def global_descriptors(cache: FeatureCache, batch: int = 256) -> np.ndarray:
    """(N, D) float32 unit-norm spatial means of the cached feature maps, read ``batch`` images at a time."""
    desc = np.empty((len(cache), cache.dim), dtype=np.float32)
    start = 0
    for block in cache.iter_chunks(batch):
        desc[start : start + len(block)] = block.mean(axis=(2, 3))
        start += len(block)
    faiss.normalize_L2(desc)
    return desc


EXACT_MAX = 200_000
"""The most images ``"auto"`` searches exactly: exact costs N^2, HNSW about N log N."""
KNN_METHODS = ("auto", "exact", "hnsw")


def nearest_neighbours(
    descriptors: np.ndarray,
    k: int,
    batch: int = 4096,
    method: str = "auto",
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 128,
) -> np.ndarray:
    """(N, k) int64 indices of each row's top-k rows by inner product, itself first.

    Rows must be unit-norm for this to be cosine similarity. Self is put first even when
    a duplicate row ties with it (or float rounding ranks one above it). ``method``: "exact"
    (a flat index), "hnsw" (faiss's approximate graph index with ``hnsw_m`` links per node;
    a larger ``ef_search`` finds more of the true neighbours, and ``ef_search`` >= N on a
    small set finds them all), or "auto": exact up to :data:`EXACT_MAX` images, else HNSW
    (recall against exact: ``benchmarks/bench_knn.py``). The exact table is the same for any
    thread count (tests/test_speed.py); an HNSW graph is built on all threads at once, so it can
    differ slightly between runs.
    """
    if method not in KNN_METHODS:
        raise SettingError(f"kNN method {method!r} is not one of {', '.join(KNN_METHODS)}")
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    if not 1 <= k <= len(x):
        raise ValueError(f"k = {k} neighbours needs 1 <= k <= {len(x)} (the number of images)")
    index: faiss.Index
    if method == "exact" or (method == "auto" and len(x) <= EXACT_MAX):
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        graph = faiss.IndexHNSWFlat(x.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction, graph.hnsw.efSearch = ef_construction, max(ef_search, k)
        index = graph
    index.add(x)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), batch):
        _, idx = index.search(x[start : start + batch], k)
        own = np.arange(start, start + len(idx))[:, None]
        absent = ~(idx == own).any(axis=1)
        idx[absent] = np.concatenate([own[absent], idx[absent, :-1]], axis=1)
        out[start : start + len(idx)] = np.take_along_axis(idx, np.argsort(idx != own, axis=1, kind="stable"), 1)
    return out


def knn_path(cache: FeatureCache, k: int) -> Path:
    return cache.root / f"knn-{k}.npy"


def _read_knn(cache: FeatureCache, k: int) -> np.ndarray | None:
    """The stored table when it exists and fits this cache, else None (so it is rebuilt)."""
    try:
        table = np.load(knn_path(cache, k))
    except (FileNotFoundError, ValueError, OSError):
        return None
    return table if table.shape == (len(cache), k) else None


def knn_indices(cache: FeatureCache, k: int = KNN_K, batch: int = 4096) -> np.ndarray:
    """(N, k) int64 kNN table of the cached images (in ``cache.ids`` order), built once and reused."""
    if not 1 <= k <= len(cache):
        raise SettingError(
            f"knn_k = {k} nearest neighbours is not allowed for the {len(cache)} training images of "
            f"{cache.root}: knn_k must be between 1 and {len(cache)} (config key knn_k)"
        )
    table = _read_knn(cache, k)
    if table is None:
        table = nearest_neighbours(global_descriptors(cache), k, batch)
        save_npy(table, knn_path(cache, k))
    return table


def load_knn(cache: FeatureCache, k: int = KNN_K, build: bool = True) -> np.ndarray:
    """The kNN table; with ``build=False`` a missing one is an error instead of a (long) computation."""
    if build:
        return knn_indices(cache, k)
    table = _read_knn(cache, k)
    if table is None:
        raise CacheError(
            f"no {k}-NN table {knn_path(cache, k)} for this feature cache; build it with "
            f"`unseg stego knn` or unseg.methods.stego.knn.knn_indices(cache, k={k})"
        )
    return table
