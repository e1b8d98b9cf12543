"""``unseg segment`` end to end against the bare forward pass on the same images, in one run.

Times, alternating, ``--repeats`` times on the same images and threads:

* ``bare``: the backbone's forward on batches already decoded, resized and in memory (the floor);
* ``segment``: :func:`unseg.segment` end to end into a fresh folder: decode, forward (into a
  private cache), the method's fit (spectral: each image's graph, eigenvectors, merging, and the
  folder's vocabulary), each image decoded again and brought to its own resolution (guided
  filter), and the label / segment / foreground PNGs, panels and ``index.html`` written.

The ratio ``segment / bare`` throughput is taken on each side's best run (the least disturbed
by other processes) and on the medians; 1.00 would mean segmenting costs nothing beyond the
forward. Then the time of each stage of ``segment`` (its best run), per image. Images: any
folder (``--images``), default CamVid's val split (``--root``). Run:
``python benchmarks/bench_segment.py --root ../shared/data/camvid``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from unseg import create_backbone, segment
from unseg.datasets.base import read_image
from unseg.features import as_size, image_to_tensor
from unseg.segment import collect_images
from unseg.threads import available_cores, set_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/camvid", help="CamVid root (its val images) unless --images")
    p.add_argument("--images", help="a folder of images instead")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--method", default=None, help="segment's method (default: segment's own default)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", help="the backbone's weights (e.g. 'random' for a ViT's cost without its weights)")
    p.add_argument("--input-size", type=int, default=448)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch/faiss threads (default: the thread policy, unseg.threads)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    threads = set_threads(args.threads)
    folder = Path(args.images) if args.images else Path(args.root) / "val"
    images = collect_images([folder])[: args.limit]
    size = as_size(args.input_size)
    backbone = create_backbone(args.backbone, args.weights).eval()
    batches = [
        torch.stack(
            [
                image_to_tensor(read_image(i.path), size, backbone.mean, backbone.std)
                for i in images[s : s + args.batch_size]
            ]
        )
        for s in range(0, len(images), args.batch_size)
    ]
    with torch.inference_mode():
        backbone(batches[0])  # warm-up
    print(
        f"# segment vs bare forward: {args.backbone} on {len(images)} images of {folder} at {args.input_size}px, "
        f"batch {args.batch_size}, {args.workers} loader workers, threads {threads} of {available_cores()} cores, "
        f"{platform.processor() or platform.machine()}"
    )

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                backbone(x)
        return time.perf_counter() - start

    runs: dict[str, list[float]] = {"bare": [], "segment": []}
    stages: list[dict[str, float]] = []
    description = ""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [i.path for i in images]
        for r in range(args.repeats):
            runs["bare"].append(bare())
            start = time.perf_counter()
            run = segment(
                paths,
                out_dir=Path(tmp) / f"out{r}",
                method=args.method,
                backbone=args.backbone,
                weights=args.weights,
                input_size=args.input_size,
                batch_size=args.batch_size,
                num_workers=args.workers,
            )
            runs["segment"].append(time.perf_counter() - start)
            stages.append(run.seconds)
            description = run.describe()
    n = len(images)
    print(f"# {description}")
    print(f"{'path':9s} {'img/s':>7s} {'best s':>7s} {'median s':>9s}  runs (s)")
    for name, times in runs.items():
        print(
            f"{name:9s} {n / min(times):7.2f} {min(times):7.2f} {statistics.median(times):9.2f}  "
            + " ".join(f"{t:.2f}" for t in times)
        )
    best = min(runs["bare"]) / min(runs["segment"])
    median = statistics.median(runs["bare"]) / statistics.median(runs["segment"])
    print(
        f"segment / bare forward throughput: {best:.2f} (best runs), {median:.2f} (medians)  (1.00 = nothing "
        "beyond the forward)"
    )
    fastest = stages[runs["segment"].index(min(runs["segment"]))]
    print(
        "segment's stages (its best run), ms per image: "
        + ", ".join(f"{name} {1000 * seconds / n:.1f}" for name, seconds in fastest.items())
        + f"; bare forward {1000 * min(runs['bare']) / n:.1f}"
    )


if __name__ == "__main__":
    main()
