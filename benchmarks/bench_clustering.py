"""Clustering protocol speed: today's path against the one it replaced, on the same cached tokens.

Extracts CamVid val (or reads ``--cache``), then runs the overclustering protocol twice
in one process: the reference (float64 standardise + PCA over transposed copies, then
``faiss.Kmeans`` with its sequential ``nredo`` loop, one seed after the other, faiss on
all threads) and ``evaluate_clustering`` (float32 one-pass PCA, every restart of every
seed as a parallel job). Prints both wall times, their ratio, and the largest per-seed
mIoU difference (0 = identical results). Run: `make bench` or
`python benchmarks/bench_clustering.py --root ../shared/data/camvid --ks 100 300`.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Iterable

import faiss
import numpy as np

from unseg import create_backbone, create_dataset, extract_features
from unseg.evaluation.clustering import evaluate_clustering, project_tokens, score_labels
from unseg.features import FeatureCache
from unseg.features.cache import cached_masks
from unseg.threads import get_threads, set_threads


class ReferencePCA:
    """The StandardPCA this project shipped before: float64 chunks, Chan merging, unfolded transform."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def fit(self, chunks: Iterable[np.ndarray]) -> ReferencePCA:
        n, mean, scatter = 0, None, None
        for chunk in chunks:
            x = np.asarray(chunk, dtype=np.float64)
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
        var = np.diag(scatter) / n
        eps = np.finfo(np.float64).eps
        constant = var <= n * eps * var + (n * mean * eps) ** 2
        self.mean_, self.scale_ = mean, np.where(constant, 1.0, np.sqrt(var))
        cov = scatter / n / np.outer(self.scale_, self.scale_)
        eigval, eigvec = np.linalg.eigh(cov)
        comps = eigvec[:, np.argsort(eigval)[::-1][: self.dim]].T
        comps *= np.sign(comps[np.arange(self.dim), np.abs(comps).argmax(axis=1)])[:, None]
        self.components_ = comps
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = (x.astype(np.float32) - self.mean_.astype(np.float32)) / self.scale_.astype(np.float32)
        return z @ self.components_.T.astype(np.float32)


def reference_protocol(
    cache: FeatureCache, masks: np.ndarray, num_classes: int, ks: list[int], seeds: list[int], niter: int, nredo: int
) -> tuple[dict[int, list[float]], dict[str, float]]:
    """The protocol as it ran before: per-seed mIoU for each K, and seconds per stage."""
    times = {}
    start = time.perf_counter()
    pca = ReferencePCA(50).fit(cache.iter_tokens())
    tokens = np.concatenate([pca.transform(t) for t in cache.iter_tokens()])
    times["pca"] = time.perf_counter() - start
    start = time.perf_counter()
    miou: dict[int, list[float]] = {}
    for k in ks:
        miou[k] = []
        for seed in seeds:
            km = faiss.Kmeans(tokens.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False)
            km.train(tokens)
            index = faiss.IndexFlatL2(tokens.shape[1])
            index.add(km.centroids)
            labels = index.search(tokens, 1)[1][:, 0].reshape(-1, *cache.grid)
            miou[k].append(score_labels(labels, masks, num_classes, k)[0].miou)
    times["kmeans+score"] = time.perf_counter() - start
    return miou, times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="../shared/data/camvid")
    p.add_argument("--cache", help="an existing feature cache folder (skips the extraction)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--ks", type=int, nargs="+", default=[100, 300])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--niter", type=int, default=100)
    p.add_argument("--nredo", type=int, default=5)
    p.add_argument("--threads", type=int, help="default: UNSEG_THREADS, OMP_NUM_THREADS or all cores")
    p.add_argument(
        "--reference-threads",
        type=int,
        help="faiss threads of the reference (default: --threads, as the old code used them all)",
    )
    args = p.parse_args()
    set_threads(args.threads)
    dataset = create_dataset("camvid", args.root, "val")
    with tempfile.TemporaryDirectory() as tmp:
        if args.cache:
            cache = FeatureCache(args.cache)
        else:
            backbone = create_backbone(args.backbone).eval()
            cache = extract_features(backbone, dataset, (448, 448), cache_root=tmp, device="cpu", progress=False)
        masks = cached_masks(cache, dataset, (100, 100))
        seeds = list(range(args.seeds))
        n = len(cache) * cache.grid[0] * cache.grid[1]
        print(
            f"# clustering protocol on camvid/val: {n} tokens x {cache.dim}, PCA 50, K {args.ks}, "
            f"{len(seeds)} seeds, niter {args.niter}, nredo {args.nredo}, {get_threads()} threads "
            f"(reference: {args.reference_threads or get_threads()}), "
            f"{platform.processor() or platform.machine()}"
        )
        faiss.omp_set_num_threads(args.reference_threads or get_threads())
        ref_miou, ref_times = reference_protocol(
            cache, masks, dataset.num_classes, args.ks, seeds, args.niter, args.nredo
        )
        faiss.omp_set_num_threads(get_threads())
        start = time.perf_counter()
        project_tokens(cache, 50)
        new_pca = time.perf_counter() - start
        start = time.perf_counter()
        results = evaluate_clustering(
            cache, masks, dataset.num_classes, ks=args.ks, seeds=seeds, niter=args.niter, nredo=args.nredo
        )
        new_total = time.perf_counter() - start
    ref_total = sum(ref_times.values())
    print(
        f"reference  standardise+PCA {ref_times['pca']:6.2f} s, k-means+score {ref_times['kmeans+score']:7.2f} s, "
        f"total {ref_total:7.2f} s"
    )
    print(
        f"unseg      standardise+PCA {new_pca:6.2f} s ({ref_times['pca'] / new_pca:.1f}x faster), "
        f"whole protocol {new_total:7.2f} s"
    )
    print(f"speed-up   {ref_total / new_total:.2f}x (reference time / unseg time)")
    for r in results:
        diff = max(abs(a - b) for a, b in zip(r.miou, ref_miou[r.k], strict=True))
        print(f"K={r.k:<4d} mIoU per seed {[round(v, 2) for v in r.miou]}  max |unseg - reference| {diff:.1e}")


if __name__ == "__main__":
    main()
