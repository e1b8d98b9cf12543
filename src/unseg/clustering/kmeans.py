"""Standardise + PCA and faiss k-means: the project's only clustering code.

Leopart's overclustering is StandardScaler -> PCA(50) -> faiss k-means (niter 100, nredo 5);
:class:`StandardPCA` fits the first two from a stream of chunks, so token sets larger than
memory can be read from a memory map. :func:`fit_centroids` runs faiss's k-means with
every restart of every (K, seed) as its own job, spread over the cores by the thread
policy (:mod:`unseg.threads`), and gives the centroids faiss's own ``nredo`` loop gives;
:func:`assign` labels points block by block, so memory does not grow with the points.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import faiss
import numpy as np

from ..defaults import NITER, NREDO
from ..threads import parallel_map, serial_blas

__all__ = ["StandardPCA", "KMeansResult", "kmeans", "fit_centroids", "assign"]

log = logging.getLogger(__name__)
GRAM_ROWS = 512  # rows per float32 product in StandardPCA.fit: short float32 sums, merged in float64
ASSIGN_ROWS = 1 << 16  # points per assignment job (a multiple of faiss's 4096-query blocks)
TRANSFORM_ROWS = 1 << 16  # rows per PCA job: a projection block, and a float32 fit block (of GRAM_ROWS parts)
FAISS_BLAS_MIN_ROWS = 20  # faiss computes distances without BLAS below this many queries (other rounding)
REDO_SEED_STRIDE = 15486557  # faiss Clustering: restart r starts from rand_perm(n, seed + 1 + r * stride)


_Moments = tuple[int, np.ndarray, np.ndarray]  # rows, mean, centred scatter


def _merge(a: _Moments, b: _Moments) -> _Moments:
    """Moments of two parts together (Chan et al.'s pairwise update), in float64."""
    (n, mean, scatter), (rows, m, s) = a, b
    total = n + rows
    delta = m - mean
    return total, mean + delta * (rows / total), scatter + s + np.outer(delta, delta) * (n * rows / total)


class StandardPCA:
    """Per-dimension standardisation (population std) followed by PCA to ``dim`` components.

    With ``dim`` >= the input dimension the data is only standardised. Component signs
    are fixed (largest-magnitude loading positive), so a fit is reproducible.
    """

    def __init__(self, dim: int, dtype: type = np.float64) -> None:
        if dim < 1:
            raise ValueError(f"PCA dim must be >= 1, got {dim}")
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"PCA dtype must be float32 or float64, got {dtype}")
        self.dim, self.dtype = dim, dtype
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.components_: np.ndarray | None = None  # (dim, D); None when only standardising
        self.explained_variance_: np.ndarray | None = None

    def fit(self, chunks: Iterable[np.ndarray]) -> StandardPCA:
        """One pass over (n_i, D) chunks; per-part centred moments are merged (Chan et al.) in float64.

        Centring each part keeps the precision for features far from zero, unlike sum / sum of
        squares. ``dtype`` float64: each chunk is one part, products in float64. float32
        (four times faster): parts of at most ``GRAM_ROWS`` rows, so every float32 product is
        a short sum; the components then agree with float64 to ~1e-7 and projections to ~1e-5,
        but k-means can still move a few boundary points, so float64 is the default.
        """
        moments, dim = None, None
        for chunk in chunks:
            x = np.asarray(chunk)
            if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
                expected = "(n, D)" if dim is None else f"(n, {dim})"
                raise ValueError(f"PCA chunk of shape {x.shape} is not {expected}")
            dim = x.shape[1]
            step = max(len(x), 1) if self.dtype == np.float64 else TRANSFORM_ROWS
            with serial_blas():  # each block's products on one thread, the blocks side by side
                blocks = parallel_map(self._moments, [x[s : s + step] for s in range(0, len(x), step)])
            for block in blocks:  # merged in order: the same sums whatever the thread count
                moments = block if moments is None else _merge(moments, block)
        if moments is None:
            raise ValueError("PCA was given no data to fit")
        n, mean, scatter = moments
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
        with serial_blas():
            eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1][: self.dim]
        comps = eigvec[:, order].T
        rows = np.arange(self.dim)
        comps *= np.sign(comps[rows, np.abs(comps).argmax(axis=1)])[:, None]
        self.components_, self.explained_variance_ = comps, eigval[order]
        return self

    def _moments(self, rows: np.ndarray) -> _Moments:
        """(rows, float64 mean, float64 centred scatter) of a block: one part in float64, parts of
        ``GRAM_ROWS`` rows merged in order in float32."""
        step = max(len(rows), 1) if self.dtype == np.float64 else GRAM_ROWS
        moments = None
        for start in range(0, len(rows), step):
            part = np.asarray(rows[start : start + step], dtype=self.dtype)
            m = part.mean(axis=0, dtype=np.float64)
            xc = part - m.astype(self.dtype)
            block = (len(part), m, np.asarray(xc.T @ xc, dtype=np.float64))
            moments = block if moments is None else _merge(moments, block)
        assert moments is not None  # fit passes blocks of at least one row
        return moments

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
        assert self.scale_ is not None  # fitted with mean_
        mean, scale = self.mean_.astype(np.float32), self.scale_.astype(np.float32)
        comps = None if self.components_ is None else self.components_.T.astype(np.float32)
        out = np.empty((len(x), self.out_dim), np.float32)

        def project(start: int) -> None:
            z = (x[start : start + TRANSFORM_ROWS].astype(np.float32) - mean) / scale
            out[start : start + len(z)] = z if comps is None else z @ comps

        with serial_blas():  # fixed blocks, one BLAS thread each: rounding independent of the thread count
            parallel_map(project, range(0, len(x), TRANSFORM_ROWS))
        return out


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


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) blocks of ``size`` rows; none too short for faiss's BLAS path (a short last one
    joins the one before)."""
    bounds = list(range(0, n, max(size, FAISS_BLAS_MIN_ROWS))) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < FAISS_BLAS_MIN_ROWS:
        del bounds[-2]
    return list(pairwise(bounds))


def _search(
    x: np.ndarray, centroids: np.ndarray, spherical: bool, block: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, score) of (n, D) rows, ``block`` rows at a time: squared L2 distance, or inner product
    when spherical."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(f"points of shape {x.shape} and centroids of shape {centroids.shape} do not fit")
    index = faiss.IndexFlatIP(x.shape[1]) if spherical else faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    labels, score = np.empty(len(x), np.int64), np.empty(len(x), np.float32)

    def search(bounds: tuple[int, int]) -> None:
        start, stop = bounds
        s, i = index.search(np.ascontiguousarray(x[start:stop], dtype=np.float32), 1)
        labels[start:stop], score[start:stop] = i[:, 0], s[:, 0]

    # fixed blocks, one faiss thread each: the same distances (and ties) whatever the thread count
    parallel_map(search, _blocks(len(x), block or ASSIGN_ROWS), per_job=1)
    return labels, score


def assign(x: np.ndarray, centroids: np.ndarray, spherical: bool = False, block: int | None = None) -> np.ndarray:
    """int64 label of each row's nearest centroid (largest inner product when spherical), ``block``
    (default ``ASSIGN_ROWS``) rows at a time."""
    return _search(np.asarray(x), centroids, spherical, block)[0]


def _rand_perm(n: int, seed: int) -> np.ndarray:
    """faiss's own permutation of range(n) for ``seed`` (what its sampling and initialisation use)."""
    perm = np.empty(n, dtype=np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), n, seed)  # type: ignore[attr-defined]  # missing from faiss's stubs
    return perm


@dataclass(frozen=True, eq=False)
class _Restart:
    x: np.ndarray  # the training set (faiss's sample)
    k: int
    init_seed: int
    niter: int
    spherical: bool


def _run_restart(job: _Restart) -> tuple[float, np.ndarray]:
    """One faiss k-means restart: (final objective, centroids), started where faiss's restart would start."""
    d = job.x.shape[1]
    if len(job.x) == job.k:  # faiss's corner case: the training points are the centroids
        return 0.0, job.x.copy()
    cp = faiss.ClusteringParameters()
    cp.niter, cp.nredo, cp.spherical, cp.verbose = job.niter, 1, job.spherical, False
    cp.max_points_per_centroid = len(job.x)  # already sampled
    cp.min_points_per_centroid = 0  # warned once by fit_centroids
    clus = faiss.Clustering(d, job.k, cp)
    start = job.x[_rand_perm(len(job.x), job.init_seed)[: job.k]]
    faiss.copy_array_to_vector(np.ascontiguousarray(start).ravel(), clus.centroids)
    index = faiss.IndexFlatIP(d) if job.spherical else faiss.IndexFlatL2(d)
    clus.train(job.x, index)
    stats = clus.iteration_stats  # a SWIG vector (at, size), where faiss's stubs say a list
    obj = stats.at(stats.size() - 1).obj  # type: ignore[attr-defined]
    return obj, faiss.vector_float_to_array(clus.centroids).reshape(job.k, d)


def _training_set(x: np.ndarray, k: int, seed: int, max_points_per_centroid: int) -> np.ndarray:
    """faiss's training sample: the first k * max_points_per_centroid of its seeded permutation, when more."""
    if len(x) <= k * max_points_per_centroid:
        return x
    keep = _rand_perm(len(x), seed)[: k * max_points_per_centroid]
    return np.ascontiguousarray(x[keep], dtype=np.float32)


def fit_centroids(
    x: np.ndarray,
    runs: Sequence[tuple[int, int]],
    niter: int = NITER,
    nredo: int = NREDO,
    spherical: bool = False,
    max_points_per_centroid: int | None = None,
    threads: int | None = None,
    warn_few_points: bool = True,
) -> list[np.ndarray]:
    """float32 (k, D) centroids of faiss k-means for each (k, seed) in ``runs``, restarts run in parallel.

    Each centroid set equals ``faiss.Kmeans(D, k, niter=niter, nredo=nredo, seed=seed, ...)``
    trained on ``x``: the same seeded sample of k * ``max_points_per_centroid`` points
    (None: faiss's default, 256, as in Leopart), each restart from the same seeded start,
    the best final objective kept (the first on ties). Rows of ``x`` must already be
    unit-norm when ``spherical``. ``threads``: see :func:`unseg.threads.parallel_map`.
    ``warn_few_points``: log when there are fewer points than faiss advises (off for callers that
    cluster few points by design, e.g. one image's tokens).
    """
    if niter < 1 or nredo < 1:
        raise ValueError(f"k-means needs niter >= 1 and nredo >= 1, got niter={niter}, nredo={nredo}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    mppc = (
        faiss.ClusteringParameters().max_points_per_centroid
        if max_points_per_centroid is None
        else max_points_per_centroid
    )
    min_points = faiss.ClusteringParameters().min_points_per_centroid
    jobs, samples = [], {}
    for k, seed in runs:
        if not 1 <= k <= len(x):
            raise ValueError(f"cannot make k={k} clusters out of {len(x)} points")
        if (k, seed) not in samples:
            samples[k, seed] = _training_set(x, k, seed, mppc)
        if warn_few_points and len(samples[k, seed]) < k * min_points:
            log.warning(
                "clustering %d points into %d centroids: faiss advises at least %d points",
                len(samples[k, seed]),
                k,
                k * min_points,
            )
        jobs += [_Restart(samples[k, seed], k, seed + 1 + r * REDO_SEED_STRIDE, niter, spherical) for r in range(nredo)]
    order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j].x) * jobs[j].k)  # longest first: even finish
    # one faiss thread per restart: a restart's centroids do not depend on the thread count
    done = dict(zip(order, parallel_map(_run_restart, [jobs[j] for j in order], threads, per_job=1), strict=True))
    better = (lambda a, b: a > b) if spherical else (lambda a, b: a < b)
    out = []
    for i in range(len(runs)):
        best_obj, best = None, None
        for obj, centroids in (done[i * nredo + r] for r in range(nredo)):
            if best is None or better(obj, best_obj):
                best_obj, best = obj, centroids
        assert best is not None  # nredo >= 1
        out.append(best)
    return out


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int,
    niter: int = NITER,
    nredo: int = NREDO,
    spherical: bool = False,
    max_points_per_centroid: int | None = None,
    threads: int | None = None,
    warn_few_points: bool = True,
) -> KMeansResult:
    """faiss k-means (CPU), deterministic given ``seed``; the best of ``nredo`` runs is kept.

    ``spherical``: cosine k-means — rows are L2-normalised, centroids kept on the unit sphere
    and points assigned by inner product. faiss trains on a seeded sample of
    k * ``max_points_per_centroid`` points when there are more (None: faiss's default, 256,
    as in Leopart); labels are always computed for every point. The restarts run in
    parallel (:func:`fit_centroids`) with the result of faiss's sequential ``nredo``.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"k-means input must be (n, D), got shape {x.shape}")
    x = unit_rows(x) if spherical else np.ascontiguousarray(x, dtype=np.float32)
    centroids = fit_centroids(
        x, [(k, seed)], niter, nredo, spherical, max_points_per_centroid, threads, warn_few_points
    )[0]
    labels, score = _search(x, centroids, spherical)
    if spherical:  # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c
        inertia = float(
            (x.astype(np.float64) ** 2).sum()
            + (centroids.astype(np.float64) ** 2).sum(1)[labels].sum()
            - 2 * score.astype(np.float64).sum()
        )
    else:
        inertia = float(score.astype(np.float64).sum())
    return KMeansResult(centroids=centroids, labels=labels, inertia=inertia)
