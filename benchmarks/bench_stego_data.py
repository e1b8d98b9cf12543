"""STEGO data preparation speed: the kNN table against N, and the dense CRF's images/s.

kNN: random unit descriptors (N, D), top-k by inner product with a faiss flat index
searched in query blocks (what ``knn_indices`` runs on a cache's descriptors). CRF:
random images with smooth random logits at 1/8 of the image size (a backbone's grid),
for each number of processes. Run: `python benchmarks/bench_stego_data.py`.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from unseg.methods.stego.knn import nearest_neighbours
from unseg.postprocess import crf_batch


def bench_knn(sizes: list[int], dim: int, k: int, batch: int) -> None:
    print(
        f"\nkNN: D={dim}, k={k}, faiss IndexFlatIP, query blocks of {batch}, "
        f"faiss threads {faiss.omp_get_max_threads()}"
    )
    print(f"{'N':>8} | {'seconds':>8} | {'images/s':>9} | {'table MiB':>9}")
    rng = np.random.default_rng(0)
    for n in sizes:
        x = rng.normal(size=(n, dim)).astype(np.float32)
        faiss.normalize_L2(x)
        start = time.perf_counter()
        table = nearest_neighbours(x, k, batch)
        seconds = time.perf_counter() - start
        print(f"{n:>8} | {seconds:>8.2f} | {n / seconds:>9.0f} | {table.nbytes / 2**20:>9.1f}")


def bench_crf(num_images: int, size: tuple[int, int], classes: int, processes: list[int]) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(num_images)]
    logits = [
        F.avg_pool2d(torch.randn(1, classes, size[0] // 8, size[1] // 8) * 4, 3, 1, 1)[0] for _ in range(num_images)
    ]
    print(
        f"\ndense CRF: {num_images} images {size[0]}x{size[1]}, {classes} classes, "
        f"logits {size[0] // 8}x{size[1] // 8}, 10 iterations"
    )
    print(f"{'processes':>9} | {'seconds':>8} | {'images/s':>9}")
    for p in processes:
        start = time.perf_counter()
        crf_batch(images, logits, processes=p)
        seconds = time.perf_counter() - start
        print(f"{p:>9} | {seconds:>8.2f} | {num_images / seconds:>9.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--crf-images", type=int, default=8)
    p.add_argument("--crf-size", type=int, nargs=2, default=[360, 480])
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}"
    )
    bench_knn(args.sizes, args.dim, args.k, args.batch)
    bench_crf(args.crf_images, tuple(args.crf_size), args.classes, args.processes)


if __name__ == "__main__":
    main()
