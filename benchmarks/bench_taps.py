"""Which EfficientNet-Lite stage outputs ("taps") cluster best on CamVid val.

Runs the backbone once over the split, keeps every stage output from stage 2 (stride 8) to
the 1x1 head conv (1280 channels, stride 32), brings each to the stride-16 token grid
(average-pooled from finer grids, bilinear from coarser ones), and scores each tap
combination with the clustering protocol of the README (StandardScaler + PCA 50, faiss
k-means niter 100 nredo 5, Hungarian on IoU for K = #classes, greedy for larger K, 100x100
masks, seeds 0..N-1). ``b4+b6`` is what ``efficientnet_lite*`` serves, ``b4+b5`` is
``efficientnet_lite0_stage5``. Run:
`python benchmarks/bench_taps.py --root ../shared/data/camvid [--backbone efficientnet_lite1] [--taps b4+b6 b5]`.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from unseg import create_backbone, create_dataset
from unseg.clustering import StandardPCA, kmeans
from unseg.evaluation.clustering import score_labels
from unseg.features import image_to_tensor
from unseg.features.transforms import resize_mask

DEFAULT_TAPS = [
    "b4+b6",
    "b2",
    "b3",
    "b4",
    "b5",
    "b6",
    "head",
    "b4+b5",
    "b5+b6",
    "b4+b5+b6",
    "b3+b4+b5+b6",
    "b2+b4+b6",
    "b4+head",
    "b4+b6+head",
]


@torch.no_grad()
def stage_outputs(
    backbone, dataset, size: int, mask_size: tuple[int, int] = (100, 100), batch: int = 16
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(tap name -> (N*h*w, C) tokens on the stride-16 grid, (N, *mask_size) label maps), in image
    order; each image is decoded once for both."""
    m, grid = backbone.model, size // 16
    taps: dict[str, list[np.ndarray]] = {}
    masks = []
    for start in range(0, len(dataset), batch):
        tensors = []
        for sample in dataset.samples[start : start + batch]:
            image = dataset.load_image(sample)
            tensors.append(image_to_tensor(image, (size, size), backbone.mean, backbone.std))
            masks.append(resize_mask(dataset.load_mask(sample, image.size), mask_size))
        x = torch.stack(tensors)
        y = m.bn1(m.conv_stem(x))
        outs = {}
        for i, stage in enumerate(m.blocks):
            y = stage(y)
            if i >= 2:
                outs[f"b{i}"] = y
        outs["head"] = m.bn2(m.conv_head(y))
        for name, v in outs.items():
            v = (
                F.adaptive_avg_pool2d(v, grid)
                if v.shape[-1] > grid
                else F.interpolate(v, size=(grid, grid), mode="bilinear", align_corners=False)
            )
            taps.setdefault(name, []).append(v.permute(0, 2, 3, 1).reshape(-1, v.shape[1]).numpy())
    return {name: np.concatenate(parts) for name, parts in taps.items()}, np.stack(masks)


def score(
    tokens: np.ndarray, masks: np.ndarray, n: int, grid: int, num_classes: int, k: int, seeds: int
) -> tuple[float, float]:
    """mean, std of the protocol's mIoU over ``seeds`` k-means seeds."""
    pca = StandardPCA(50, np.float64)
    pca.fit([tokens])
    z = pca.transform(tokens).astype(np.float32)
    mious = [
        score_labels(kmeans(z, k, seed=seed).labels.reshape(n, grid, grid), masks, num_classes, k)[0].miou
        for seed in range(seeds)
    ]
    return float(np.mean(mious)), float(np.std(mious))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="CamVid folder")
    parser.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        choices=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
    )
    parser.add_argument("--taps", nargs="+", default=DEFAULT_TAPS, help="combinations like b4+b6 (b2..b6, head)")
    parser.add_argument("--ks", nargs="+", type=int, default=[11, 100])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=448)
    args = parser.parse_args()

    dataset = create_dataset("camvid", args.root, "val")
    backbone = create_backbone(args.backbone).eval()
    start = time.perf_counter()
    taps, masks = stage_outputs(backbone, dataset, args.input_size)
    grid = args.input_size // 16
    print(
        f"# {args.backbone} taps on camvid/val ({len(dataset)} images) at {args.input_size}px, "
        f"channels {', '.join(f'{k} {v.shape[1]}' for k, v in taps.items())}; "
        f"features in {time.perf_counter() - start:.0f} s, {platform.machine()}"
    )
    print("| taps | dim | " + " | ".join(f"K = {k} mIoU" for k in args.ks) + " |")
    print("|---|---|" + "---|" * len(args.ks))
    for combo in args.taps:
        tokens = np.hstack([taps[t] for t in combo.split("+")])
        cells = [score(tokens, masks, len(dataset), grid, dataset.num_classes, k, args.seeds) for k in args.ks]
        print(
            f"| {combo} | {tokens.shape[1]} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in cells) + " |", flush=True
        )


if __name__ == "__main__":
    main()
