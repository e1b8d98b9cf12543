"""Speed and scale paths give the results of the plain ones: thread policy, parallel k-means
restarts, float32 streaming PCA, block-wise reading and assignment, approximate kNN."""

from __future__ import annotations

import sys

import faiss
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from unseg import threads
from unseg.clustering import StandardPCA
from unseg.clustering.kmeans import _blocks, fit_centroids, kmeans
from unseg.errors import ConfigError, SettingError
from unseg.evaluation.clustering import evaluate_clustering, project_tokens
from unseg.features.cache import read_rows
from unseg.methods.stego import knn

kmeans_module = sys.modules["unseg.clustering.kmeans"]


def blob_feats(n: int = 30, dim: int = 12, grid: tuple[int, int] = (4, 5), classes: int = 4, seed: int = 0):
    """(N, D, h, w) float32 features whose tokens sit around ``classes`` centres, and the (N, h, w) class maps."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, (n, *grid))
    centres = rng.normal(size=(classes, dim)) * 6 + 3
    tokens = centres[truth] + rng.normal(size=(n, *grid, dim))
    return np.ascontiguousarray(tokens.transpose(0, 3, 1, 2), dtype=np.float32), truth.astype(np.uint8)


# --- thread policy -----------------------------------------------------------------------


def test_thread_count_order_and_cap(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("UNSEG_THREADS", "2")
    assert threads.resolve_threads(1) == 1  # --threads first
    assert threads.resolve_threads() == 2  # then UNSEG_THREADS
    monkeypatch.delenv("UNSEG_THREADS")
    assert threads.resolve_threads() == 3  # then OMP_NUM_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "16,2")
    assert threads.resolve_threads() == 4  # never more than the cores
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.resolve_threads() == 4


@pytest.mark.parametrize("env, value", [("UNSEG_THREADS", "0"), ("UNSEG_THREADS", "two"), ("OMP_NUM_THREADS", "-1")])
def test_bad_thread_count_names_the_variable(monkeypatch, env, value):
    monkeypatch.delenv("UNSEG_THREADS", raising=False)
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=env):
        threads.resolve_threads()
    with pytest.raises(ConfigError, match="--threads 0"):
        threads.resolve_threads(0)


def test_parallel_map_splits_faiss_threads_and_keeps_order(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    out = threads.parallel_map(lambda i: (i, faiss.omp_get_max_threads()), range(5), threads=4)
    assert [i for i, _ in out] == list(range(5))
    assert all(n == 1 for _, n in out)  # 4 jobs at once, 4 // 4 threads each
    out = threads.parallel_map(lambda i: faiss.omp_get_max_threads(), range(2), threads=4)
    assert out == [2, 2]
    assert threads.parallel_map(lambda i: faiss.omp_get_max_threads(), [0], threads=3) == [3]


class _ThreadCount(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        return torch.get_num_threads()


def test_loader_workers_run_single_threaded_torch():
    counts = [int(b) for b in DataLoader(_ThreadCount(), batch_size=1, num_workers=1)]
    assert counts == [1, 1]


# --- k-means: parallel restarts, block-wise assignment ------------------------------------


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("mppc", [None, 20])  # None: the whole set; 20: faiss samples 20 * k points
def test_parallel_restarts_equal_faiss_nredo(spherical, mppc):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(1500, 6)) + rng.normal(size=(1500, 1)) * 3).astype(np.float32)
    if spherical:
        faiss.normalize_L2(x)
    params = {} if mppc is None else {"max_points_per_centroid": mppc}
    runs = [(8, 0), (8, 5), (12, 5)]
    ours = fit_centroids(x, runs, niter=12, nredo=3, spherical=spherical, max_points_per_centroid=mppc, threads=2)
    for (k, seed), centroids in zip(runs, ours, strict=True):
        ref = faiss.Kmeans(6, k, niter=12, nredo=3, seed=seed, spherical=spherical, verbose=False, **params)
        ref.train(x)
        np.testing.assert_array_equal(centroids, ref.centroids)


def test_assignment_blocks_never_leave_faiss_a_short_tail():
    assert _blocks(1000, 300) == [(0, 300), (300, 600), (600, 900), (900, 1000)]  # 100 rows: their own block
    assert _blocks(910, 300) == [(0, 300), (300, 600), (600, 910)]  # 10 rows join the block before
    assert _blocks(5, 300) == [(0, 5)]
    assert _blocks(100, 8) == [(0, 20), (20, 40), (40, 60), (60, 80), (80, 100)]  # at least faiss's 20


def test_same_miou_with_one_and_two_threads(tmp_path, monkeypatch, feature_cache):
    feats, truth = blob_feats()
    cache = feature_cache(tmp_path, feats, shard_size=7)
    scores = []
    for n in (1, 2):
        monkeypatch.setattr(threads, "_threads", n)
        result = evaluate_clustering(cache, truth, 4, ks=[6], seeds=[3], niter=10, nredo=2)[0]
        scores.append(result.miou[0])
    assert abs(scores[0] - scores[1]) <= 0.05
    assert scores[0] > 50  # the blobs are found, so the comparison is not between two failures


def test_pca_and_kmeans_are_bit_identical_for_any_thread_count(monkeypatch):
    """BLAS splits a product over its threads and that changes float rounding; the projection,
    a single-restart k-means and the assignment must not see how many threads there are."""
    monkeypatch.setattr(threads, "available_cores", lambda: 4)  # 3 threads even on a smaller machine
    monkeypatch.setattr(kmeans_module, "TRANSFORM_ROWS", 1024)  # several projection blocks
    monkeypatch.setattr(kmeans_module, "ASSIGN_ROWS", 1024)
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(5000, 96)) * rng.uniform(0.1, 3, 96) + 2).astype(np.float32)
    out = []
    for n in (1, 3):
        threads.set_threads(n)
        try:
            pca = StandardPCA(20).fit([x[:3000], x[3000:]])
            z = pca.transform(x)
            fit = kmeans(z, 30, seed=1, niter=8, nredo=1)
        finally:
            threads.set_threads(None)
        out.append((pca.components_, z, fit.centroids, fit.labels))
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(a, b)


def test_parallel_map_with_fixed_threads_per_job(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    out = threads.parallel_map(lambda i: (i, faiss.omp_get_max_threads()), range(3), threads=4, per_job=1)
    assert out == [(0, 1), (1, 1), (2, 1)]
    assert threads.parallel_map(lambda i: faiss.omp_get_max_threads(), [0], threads=3, per_job=1) == [1]
    with pytest.raises(ValueError, match="per_job"):
        threads.parallel_map(lambda i: i, [0], per_job=0)


# --- streaming (scale) path ------------------------------------------------------------------


def test_streaming_float32_pca_equals_in_memory_float64():
    rng = np.random.default_rng(2)
    x = ((rng.normal(size=(5000, 24)) * np.linspace(0.3, 5, 24)) @ rng.normal(size=(24, 24)) + 3).astype(np.float32)
    whole = StandardPCA(6).fit([x])  # float64, one chunk
    streamed = StandardPCA(6, np.float32).fit(x[i : i + 700] for i in range(0, len(x), 700))
    z = (x.astype(np.float64) - x.mean(0, dtype=np.float64)) / x.std(0, dtype=np.float64)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    ref = z @ vt[:6].T
    ref *= np.sign((ref * whole.transform(x)).sum(0))
    np.testing.assert_allclose(whole.transform(x), ref, atol=1e-5)
    np.testing.assert_allclose(streamed.transform(x), whole.transform(x), atol=1e-5)


def test_read_rows_equals_the_memory_map(tmp_path):
    a = np.random.default_rng(3).normal(size=(9, 2, 3)).astype(np.float16)
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    np.testing.assert_array_equal(read_rows(m, 2, 7), a[2:7])
    np.testing.assert_array_equal(read_rows(a, 0, 3), a[:3])  # not a map: plain slice


def test_scale_path_gives_the_in_memory_labels(tmp_path, monkeypatch, feature_cache):
    """Cache read in blocks smaller than itself, PCA fitted streaming in float32, points assigned
    in blocks: the labels of an in-memory float64 PCA + faiss k-means on all points."""
    feats, _ = blob_feats(n=150, dim=10, grid=(3, 4), classes=5, seed=4)  # 1,800 tokens; blocks of 64 images
    cache = feature_cache(tmp_path, feats, shard_size=100)
    monkeypatch.setattr(kmeans_module, "ASSIGN_ROWS", 256)
    calls = []
    monkeypatch.setattr(kmeans_module, "_blocks", lambda n, size: calls.append(size) or _blocks(n, size))
    tokens = project_tokens(cache, pca_dim=4, keep_bytes=0)
    k, seed = 5, 2  # k * 256 points >= 1,800: the sample is the whole set
    labels = kmeans(tokens, k, seed=seed, niter=15, nredo=2).labels

    x = feats.transpose(0, 2, 3, 1).reshape(-1, 10).astype(np.float64)
    pca = StandardPCA(4).fit([x])
    ref_tokens = pca.transform(x)
    np.testing.assert_allclose(tokens, ref_tokens, atol=1e-5)
    ref = faiss.Kmeans(4, k, niter=15, nredo=2, seed=seed, verbose=False)
    ref.train(ref_tokens)
    np.testing.assert_array_equal(labels, ref.index.search(ref_tokens, 1)[1][:, 0])
    assert calls == [256]  # the points were assigned in 8 blocks


# --- kNN -------------------------------------------------------------------------------------------


def test_hnsw_configured_exhaustive_returns_the_exact_neighbours():
    x = np.random.default_rng(5).normal(size=(60, 16)).astype(np.float32)
    faiss.normalize_L2(x)
    exact = knn.nearest_neighbours(x, 8, method="exact")
    np.testing.assert_array_equal(knn.nearest_neighbours(x, 8, method="hnsw", ef_search=len(x)), exact)
    np.testing.assert_array_equal(knn.nearest_neighbours(x, 8), exact)  # auto: exact at this size
    np.testing.assert_array_equal(exact[:, 0], np.arange(60))


def test_exact_knn_table_is_the_same_for_any_thread_count(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(20, 64)).repeat(150, axis=0) + 0.3 * rng.normal(size=(3000, 64))).astype(np.float32)
    faiss.normalize_L2(x)
    tables = []
    for n in (1, 3):
        threads.set_threads(n)
        try:
            tables.append(knn.nearest_neighbours(x, 30, batch=512, method="exact"))
        finally:
            threads.set_threads(None)
    np.testing.assert_array_equal(tables[0], tables[1])


def test_unknown_knn_method_is_refused():
    with pytest.raises(SettingError, match="'ivf'.*auto, exact, hnsw"):
        knn.nearest_neighbours(np.eye(3, dtype=np.float32), 2, method="ivf")
