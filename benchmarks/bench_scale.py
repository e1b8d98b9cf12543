"""Clustering protocol at scale: time and peak resident memory against the number of tokens.

For each size a synthetic feature cache is written to a temporary folder (float16 shards of
28x28-token "images", 384 dims, tokens around 40 random centres plus noise, masks from the
centres), then the overclustering protocol (``evaluate_clustering``: K = 500) runs on it in
a fresh process whose peak resident memory (VmHWM, file pages included) is read at the end.
At this size the path is the streaming one: the cache is read block by block with plain
reads, the PCA is fitted in float32 in one pass and applied in a second, k-means trains on
faiss's sample of 256 * K points, and points are assigned one block at a time; what stays
in memory is the (N, 50) float32 projection (200 bytes per token) and one block.
Run: `make bench` or `python benchmarks/bench_scale.py --sizes 1000000 3000000 10000000`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GRID, DIM, CLASSES, SHARD = 28, 384, 40, 256


def make(root: Path, tokens: int) -> None:
    """Write the synthetic cache and its 100x100 masks (one shard at a time: bounded memory)."""
    from unseg.features.cache import mark_complete, prepare_cache_dir, write_shard

    n = tokens // (GRID * GRID)
    shards = -(-n // SHARD)
    rng = np.random.default_rng(0)
    centres = (rng.standard_normal((CLASSES, DIM)) * 2).astype(np.float32)
    prepare_cache_dir(root, {"num_shards": shards, "dim": DIM, "grid": [GRID, GRID], "input_size": [448, 448]})
    masks = np.empty((n, 100, 100), np.uint8)
    idx = np.arange(100) * GRID // 100
    for s in range(shards):
        m = min(SHARD, n - s * SHARD)
        truth = rng.integers(0, CLASSES, (m, GRID // 4, GRID // 4)).repeat(4, 1).repeat(4, 2)  # 4x4-token regions
        feats = centres[truth].transpose(0, 3, 1, 2) + rng.standard_normal((m, DIM, GRID, GRID), dtype=np.float32)
        write_shard(
            root,
            s,
            feats.astype(np.float16),
            np.zeros((m, GRID, GRID), np.float16),
            [f"img{i:06d}" for i in range(s * SHARD, s * SHARD + m)],
            [],
        )
        masks[s * SHARD : s * SHARD + m] = truth[:, idx][:, :, idx]
    mark_complete(root, shards)
    np.save(root / "bench-masks.npy", masks)


def run(root: Path, k: int, niter: int, nredo: int) -> dict:
    """The protocol on the cache; seconds, peak resident memory and mIoU as a dict."""
    from unseg.evaluation.clustering import evaluate_clustering
    from unseg.features import FeatureCache
    from unseg.threads import set_threads

    set_threads()
    start = time.perf_counter()
    cache = FeatureCache(root)
    masks = np.load(root / "bench-masks.npy")
    result = evaluate_clustering(cache, masks, CLASSES, ks=[k], seeds=[0], niter=niter, nredo=nredo)[0]
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    return {"seconds": seconds, "peak_gib": peak_kib / 2**20, "miou": result.miou[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--niter", type=int, default=100)
    p.add_argument("--nredo", type=int, default=5)
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="folder for the synthetic caches (10M tokens: 7.7 GB)")
    p.add_argument("--child", choices=["make", "run"], help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "make":
        return make(args.root, args.sizes[0])
    if args.child == "run":
        return print(json.dumps(run(args.root, args.k, args.niter, args.nredo)))

    from unseg.threads import get_threads

    print(
        f"# clustering protocol at scale: {DIM}-dim float16 caches of 28x28-token images, PCA 50, K={args.k}, "
        f"1 seed, niter {args.niter}, nredo {args.nredo}, {get_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"{'tokens':>10} | {'cache GB':>8} | {'seconds':>8} | {'s per M tokens':>14} | {'peak GiB':>8} | {'mIoU':>5}")
    for n in args.sizes:
        root = Path(tempfile.mkdtemp(prefix="unseg-scale-", dir=args.tmp))
        try:
            base = [sys.executable, __file__, "--sizes", str(n), "--root", str(root)]
            subprocess.run(base + ["--child", "make"], check=True)
            out = subprocess.run(
                base + ["--child", "run", "--k", str(args.k), "--niter", str(args.niter), "--nredo", str(args.nredo)],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            size_gb = sum(f.stat().st_size for f in root.glob("shard-*.feats.npy")) / 1e9
            print(
                f"{n:>10} | {size_gb:>8.1f} | {r['seconds']:>8.1f} | {r['seconds'] / n * 1e6:>14.1f} | "
                f"{r['peak_gib']:>8.2f} | {r['miou']:>5.1f}",
                flush=True,
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
