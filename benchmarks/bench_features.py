"""Feature extraction and overclustering speed on CamVid val.

Prints end-to-end extraction images/s (decode + resize, forward, cache write) against
the backbone's bare forward images/s on the same batches already in memory, and the
wall time of the overclustering protocol's parts. Run: `make bench` or
`python benchmarks/bench_features.py --root ../shared/data/camvid`.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from unseg import create_backbone, create_dataset, extract_features
from unseg.evaluation.clustering import cluster_labels, project_tokens, score_labels
from unseg.features import image_to_tensor, resolve_device
from unseg.features.cache import cached_masks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="../shared/data/camvid")
    p.add_argument("--split", default="val")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=448)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--k", type=int, default=100)
    args = p.parse_args()

    device = resolve_device(args.device)
    backbone = create_backbone(args.backbone).to(device).eval()
    dataset = create_dataset("camvid", args.root, args.split)
    size = (args.input_size, args.input_size)
    n = len(dataset)
    print(f"# {args.backbone} on camvid/{args.split} ({n} images) at {args.input_size}px, batch {args.batch_size}, "
          f"device {device}, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cache = extract_features(backbone, dataset, size, cache_root=tmp, batch_size=args.batch_size, device=str(device),
                                 num_workers=args.workers, progress=False)
        end_to_end = time.perf_counter() - start

        batches = [torch.stack([image_to_tensor(dataset[i]["image"], size, backbone.mean, backbone.std)
                                for i in range(s, min(s + args.batch_size, n))]) for s in range(0, n, args.batch_size)]
        with torch.no_grad():
            backbone.forward_with_saliency(batches[0].to(device))  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for x in batches:
                backbone.forward_with_saliency(x.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            bare = time.perf_counter() - start
        print(f"extraction end to end   {n / end_to_end:7.1f} img/s  ({end_to_end:6.1f} s)")
        print(f"bare forward            {n / bare:7.1f} img/s  ({bare:6.1f} s)")
        print(f"end-to-end / bare       {bare / end_to_end:7.2f}  (1.00 = no overhead beyond the forward)")

        masks = cached_masks(cache, dataset, (100, 100))
        start = time.perf_counter()
        tokens = project_tokens(cache, 50)
        t_pca = time.perf_counter() - start
        start = time.perf_counter()
        labels = cluster_labels(tokens, cache.grid, args.k, seed=0)
        t_kmeans = time.perf_counter() - start
        start = time.perf_counter()
        scores, _ = score_labels(labels, masks, dataset.num_classes, args.k)
        t_match = time.perf_counter() - start
        print(f"overclustering K={args.k}, 1 seed, {tokens.shape[0]} tokens: standardise+PCA {t_pca:.1f} s, "
              f"k-means (niter 100, nredo 5) {t_kmeans:.1f} s, upsample+match+score {t_match:.1f} s, "
              f"mIoU {scores.miou:.1f}")


if __name__ == "__main__":
    main()
