"""Feature extraction against the bare forward, on CamVid, in one run.

Times four things on the same images, batches and threads, alternating, ``--repeats`` times
(so a load change on a shared machine hits all alike); the ratio is taken on each one's
best run, the least disturbed by other processes, and on the medians:

* ``bare``: the backbone's forward on batches already decoded and in memory (the floor);
* ``extraction``: :func:`unseg.extract_features` end to end (decode + resize in loader
  workers, forward, copy out, shard write), into a fresh cache each time;
* ``bare old``: the bare forward of the old path's model (its layout alone);
* ``old``: the extraction loop as it was before (one loader per shard, workers decoding
  whole batches at normal priority, outputs concatenated, shards written in the foreground,
  a CNN in the default memory layout instead of channels-last), kept here only to measure
  against (fp32 only).

The ratio ``bare / extraction`` is 1.00 when extraction adds nothing to the forward. The model
is warmed up (one forward) before any timing, so no side pays the first call's setup. Then the
overclustering protocol's parts at K = ``--k`` on the new cache (one seed), whose mIoU shows a
``--precision`` effect. Run: ``make bench`` or
``python benchmarks/bench_features.py --root ../shared/data/camvid --limit 32``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from unseg import create_backbone, create_dataset, extract_features
from unseg.backbones.cnn import ConvBackbone
from unseg.evaluation.clustering import cluster_labels, project_tokens, score_labels
from unseg.features import as_size, image_to_tensor, resolve_device
from unseg.features.cache import cached_masks, mark_complete, prepare_cache_dir, write_shard
from unseg.features.extract import PRECISIONS, _Images, cache_dir_for, cache_meta
from unseg.threads import available_cores, set_threads


def old_extract(backbone, dataset, size, cache_root, batch_size, num_workers, device, shard_size=256) -> Path:
    """The extraction loop before the faster path (same preamble, same files)."""

    def collate(batch):
        kept = [(i, t) for i, t in batch if t is not None]
        return [i for i, _ in kept], torch.stack([t for _, t in kept]), [i for i, t in batch if t is None]

    meta = cache_meta(backbone, dataset, size, shard_size, "float32")
    root = cache_dir_for(meta, cache_root)
    meta = prepare_cache_dir(root, meta)
    for shard in range(meta["num_shards"]):
        indices = range(shard * shard_size, min((shard + 1) * shard_size, len(dataset)))
        loader = DataLoader(
            _Images(dataset, indices, size, backbone.mean, backbone.std, False),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate,
        )
        ids, feats, sals = [], [], []
        with torch.no_grad():
            for batch_ids, images, _ in loader:
                f, s = backbone.forward_with_saliency(images.to(device, non_blocking=True))
                feats.append(f.to("cpu", torch.float32).numpy().astype("float32", copy=False))
                sals.append(s.to("cpu", torch.float32).numpy())
                ids += batch_ids
        write_shard(root, shard, np.concatenate(feats), np.concatenate(sals), ids, [])
    mark_complete(root, meta["num_shards"])
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/camvid")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, help="only the first N images of the split")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=448)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch/faiss threads (default: the thread policy, unseg.threads)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--k", type=int, default=100, help="overclustering K (0: skip the clustering part)")
    args = p.parse_args()

    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    backbone = create_backbone(args.backbone).to(device).eval()
    dataset = create_dataset("camvid", args.root, args.split)
    if args.limit:
        dataset.samples = dataset.samples[: args.limit]
    size = as_size(args.input_size)
    n = len(dataset)
    autocast = (
        contextlib.nullcontext()
        if PRECISIONS[args.precision] is None
        else torch.autocast(device.type, dtype=PRECISIONS[args.precision])
    )
    print(
        f"# {args.backbone} on camvid/{args.split} ({n} images) at {args.input_size}px, batch {args.batch_size}, "
        f"{args.workers} loader workers, device {device}, precision {args.precision}, torch threads {threads} "
        f"of {available_cores()} cores, {platform.processor() or platform.machine()}"
    )

    batches = [
        torch.stack(
            [
                image_to_tensor(dataset[i]["image"], size, backbone.mean, backbone.std)
                for i in range(s, min(s + args.batch_size, n))
            ]
        )
        for s in range(0, n, args.batch_size)
    ]
    with torch.no_grad(), autocast:
        backbone.forward_with_saliency(batches[0].to(device))  # warm-up, for every side alike
        sync(device)

    old_backbone = (
        copy.deepcopy(backbone).lay_out(torch.contiguous_format) if isinstance(backbone, ConvBackbone) else backbone
    )
    with torch.no_grad():
        old_backbone.forward_with_saliency(batches[0].to(device))  # its warm-up
    sync(device)

    def bare(model=backbone) -> None:
        with torch.no_grad(), autocast:
            for x in batches:
                model.forward_with_saliency(x.to(device))
        sync(device)

    times: dict[str, list[float]] = {"bare": [], "extraction": [], "old": [], "bare old": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            runs = {
                "extraction": lambda r=r: extract_features(
                    backbone,
                    dataset,
                    size,
                    cache_root=Path(tmp) / f"new{r}",
                    batch_size=args.batch_size,
                    device=str(device),
                    num_workers=args.workers,
                    precision=args.precision,
                    progress=False,
                ),
                "bare": bare,
            }
            if args.precision == "fp32":
                runs["old"] = lambda r=r: old_extract(
                    old_backbone, dataset, size, Path(tmp) / f"old{r}", args.batch_size, args.workers, device
                )
                runs["bare old"] = lambda: bare(old_backbone)
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                sync(device)
                times[name].append(time.perf_counter() - start)
        cache = extract_features(
            backbone, dataset, size, cache_root=Path(tmp) / "new0", precision=args.precision, progress=False
        )  # the cache made above
        best = {k: min(v) for k, v in times.items() if v}
        median = {k: statistics.median(v) for k, v in times.items() if v}
        print(f"{'path':12s} {'img/s':>7s} {'best s':>7s} {'median s':>9s}  bare / path (best, median)  runs (s)")
        for name in ("bare", "extraction", "old", "bare old"):
            if name in best:
                print(
                    f"{name:12s} {n / best[name]:7.2f} {best[name]:7.2f} {median[name]:9.2f}  "
                    f"{best['bare'] / best[name]:5.2f} {median['bare'] / median[name]:5.2f}"
                    f"{'':17s} {' '.join(f'{t:.2f}' for t in times[name])}"
                )
        ratio = f"{best['bare'] / best['extraction']:.2f}"
        old = f" (old path: {best['bare'] / best['old']:.2f})" if "old" in best else ""
        print(f"extraction / bare forward speed, best runs: {ratio}{old}  (1.00 = nothing beyond the forward)")
        if "old" in best:
            print(
                f"extraction is {best['old'] / best['extraction']:.2f}x (best) / "
                f"{median['old'] / median['extraction']:.2f}x (median) as fast as the old path"
            )

        if args.k:
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
            print(
                f"overclustering K={args.k}, seed 0, {tokens.shape[0]} tokens, {args.precision} features: "
                f"standardise+PCA {t_pca:.1f} s, k-means (niter 100, nredo 5) {t_kmeans:.1f} s, "
                f"upsample+match+score {t_match:.1f} s, mIoU {scores.miou:.1f}"
            )


if __name__ == "__main__":
    main()
