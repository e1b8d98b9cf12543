"""STEGO kNN table beyond exact search: HNSW recall@k against exact, and time against N.

Descriptors are synthetic unit vectors drawn around 1,000 random centres (images of a
dataset share content; uniformly random descriptors would be an unrealistic worst case
for any index). At ``--recall-size`` both the exact flat index (what ``knn_indices``
runs up to ``EXACT_MAX`` images) and HNSW run, and recall@k is the share of the exact
top-k that HNSW returns. At each of ``--sizes`` HNSW alone is timed; exact search, which
grows with N^2, is extrapolated from its time at ``--recall-size``.
Run: `make bench` or `python benchmarks/bench_knn.py --sizes 100000 1000000`.
"""

from __future__ import annotations

import argparse
import platform
import time

import faiss
import numpy as np

from unseg.methods.stego.knn import nearest_neighbours
from unseg.threads import get_threads, set_threads


def descriptors(n: int, dim: int, seed: int = 0, centres: int = 1000, spread: float = 0.7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim), dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recall-size", type=int, default=100_000)
    p.add_argument("--sizes", type=int, nargs="*", default=[300_000, 1_000_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--threads", type=int, help="default: UNSEG_THREADS, OMP_NUM_THREADS or all cores")
    args = p.parse_args()
    set_threads(args.threads)
    print(
        f"# kNN table: D={args.dim}, k={args.k}, HNSW M=32 efConstruction=80 efSearch={args.ef_search}, "
        f"{get_threads()} threads, {platform.processor() or platform.machine()}"
    )

    x = descriptors(args.recall_size, args.dim)
    start = time.perf_counter()
    exact = nearest_neighbours(x, args.k, method="exact")
    t_exact = time.perf_counter() - start
    start = time.perf_counter()
    approx = nearest_neighbours(x, args.k, method="hnsw", ef_search=args.ef_search)
    t_hnsw = time.perf_counter() - start
    recall = np.mean([len(np.intersect1d(a, e)) / args.k for a, e in zip(approx, exact, strict=True)])
    print(
        f"N={args.recall_size}: exact {t_exact:.1f} s, HNSW {t_hnsw:.1f} s ({t_exact / t_hnsw:.2f}x faster), "
        f"recall@{args.k} {recall:.4f}"
    )
    print(f"{'N':>9} | {'HNSW s':>8} | {'exact s (extrapolated N^2)':>26} | {'ratio':>6}")
    for n in args.sizes:
        x = descriptors(n, args.dim, seed=1)
        start = time.perf_counter()
        nearest_neighbours(x, args.k, method="hnsw", ef_search=args.ef_search)
        seconds = time.perf_counter() - start
        extrapolated = t_exact * (n / args.recall_size) ** 2
        print(f"{n:>9} | {seconds:>8.1f} | {extrapolated:>26.0f} | {extrapolated / seconds:>5.1f}x")


if __name__ == "__main__":
    main()
