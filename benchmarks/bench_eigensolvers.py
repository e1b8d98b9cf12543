"""The spectral method's eigensolve, one image at a time and two side by side, per solver.

``segment``'s spectral method (``unseg docs photos``) solves one dense eigenproblem per image (the
normalised Laplacian of the token graph, 784 nodes for a 448 px input at stride 16) on the
thread policy's threads, one image per thread. Whether two threads halve the time depends on the
solver releasing Python's GIL while it works: this prints, for real graphs of CamVid images,
the time per graph of each solver run serially and on two threads (every BLAS on one thread), in
one run. scipy's ``eigh`` computes only the vectors asked; numpy's and torch's compute all.
Then the method's own solve (:func:`unseg.unsupervised.spectral.spectral_embedding`) with the
tokens' alike 2x2 blocks lumped (``--lump``, default the method's) against every token an unknown,
and the unknowns left per graph at each of ``--lumps``.
Run: ``python benchmarks/bench_eigensolvers.py --root ../shared/data/camvid``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from unseg import create_backbone
from unseg.datasets.base import read_image
from unseg.features import as_size, image_to_tensor
from unseg.unsupervised.spectral import SpectralSettings, affinity, alike_blocks, spectral_embedding


def laplacian(w: np.ndarray) -> np.ndarray:
    s = 1 / np.sqrt(w.sum(1))
    return np.eye(len(w), dtype=w.dtype) - s[:, None] * w * s[None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/camvid", help="CamVid root (its val images)")
    p.add_argument("--images", type=int, default=8, help="graphs: the first N val images")
    p.add_argument("--repeats", type=int, default=4, help="each graph solved this many times")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=448)
    p.add_argument("--lumps", type=float, nargs="*", default=[1.0, 0.55, 0.5, 0.45, 0.4], help="--lump values")
    args = p.parse_args()

    torch.set_num_threads(1)
    settings = SpectralSettings()
    backbone = create_backbone(args.backbone).eval()
    graphs, units = [], []
    with torch.inference_mode():
        for path in sorted((Path(args.root) / "val").iterdir())[: args.images]:
            x = image_to_tensor(read_image(path), as_size(args.input_size), backbone.mean, backbone.std)[None]
            f = backbone(x)[0].numpy()
            tokens = f.reshape(len(f), -1).T
            centred = tokens - tokens.mean(0)
            units.append(((centred / np.linalg.norm(centred, axis=1, keepdims=True)).astype(np.float32), f.shape[1:]))
            graphs.append(affinity(tokens, settings))
    affinities = graphs
    graphs = [laplacian(w) for w in graphs]
    graphs *= args.repeats
    k = settings.oversegments + 1
    solvers: dict[str, Callable[[np.ndarray], object]] = {
        f"scipy eigh, {k} smallest (evr)": lambda m: scipy.linalg.eigh(m, subset_by_index=[0, k - 1], driver="evr"),
        "numpy eigh, all": np.linalg.eigh,
        "torch eigh, all": lambda m: torch.linalg.eigh(torch.from_numpy(m)),
    }
    n = len(graphs[0])
    print(f"# {len(graphs)} solves of {n}-node graphs ({args.backbone}, {args.input_size} px), float32, BLAS 1 thread")
    print(f"{'solver':34s} {'serial ms':>10s} {'2 threads ms':>13s} {'speed-up':>9s}")
    with threadpool_limits(1):
        for name, solve in solvers.items():
            start = time.perf_counter()
            for m in graphs:
                solve(m)
            serial = (time.perf_counter() - start) / len(graphs)
            with ThreadPoolExecutor(2) as pool:
                start = time.perf_counter()
                list(pool.map(solve, graphs))
                paired = (time.perf_counter() - start) / len(graphs)
            print(f"{name:34s} {1000 * serial:10.1f} {1000 * paired:13.1f} {serial / paired:8.2f}x")
        blocks = [alike_blocks(u, h, w, settings.lump) for u, (h, w) in units] * args.repeats
        times = {}
        for name, lumped in (("every token", [None] * len(blocks)), (f"lumped at {settings.lump}", blocks)):
            start = time.perf_counter()
            for w, b in zip(affinities * args.repeats, lumped, strict=True):
                spectral_embedding(w, k, b)
            times[name] = (time.perf_counter() - start) / len(blocks)
        print(
            "spectral_embedding, serial ms per graph: "
            + ", ".join(f"{name} {1000 * t:.1f}" for name, t in times.items())
            + f" ({times['every token'] / times[f'lumped at {settings.lump}']:.2f}x)"
        )
    print(f"unknowns per graph (mean over the {len(units)} images):")
    for lump in args.lumps:
        print(f"  --lump {lump:g}: {np.mean([alike_blocks(u, h, w, lump).max() + 1 for u, (h, w) in units]):.0f}")


if __name__ == "__main__":
    main()
