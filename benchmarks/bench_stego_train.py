"""STEGO training speed on cached backbone features against on images (the study's speed-up).

Times the same optimisation step (correspondence loss + probes, backward, Adam) on batches
from the feature cache and on batches of images run through the frozen backbone. Run:
`python benchmarks/bench_stego_train.py --root ../shared/data/camvid`.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from unseg.config import load_config
from unseg.methods.stego import CachedPairs, ImagePairs, StegoConfig, StegoModule
from unseg.methods.stego.knn import knn_indices
from unseg.methods.stego.pipeline import split_data


def steps_per_second(module: StegoModule, loader: DataLoader, steps: int) -> float:
    optimiser = module.configure_optimizers()
    batches = iter(loader)
    module.train()
    start = None
    for step in range(steps + 1):  # the first step warms up and is not timed
        if step == 1:
            start = time.perf_counter()
        loss = module.losses(next(batches))["loss/total"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="../shared/data/camvid")
    p.add_argument("--config", default="stego/camvid_effnet")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cache-dir")
    args = p.parse_args()
    cfg = load_config(StegoConfig, args.config, [f"root={args.root}"])
    train = split_data(cfg, cfg.train_split, args.cache_dir)
    knn = knn_indices(train.cache, cfg.knn_k)
    torch.manual_seed(0)
    cached = DataLoader(
        CachedPairs(train.cache, knn, cfg.num_neighbors), batch_size=cfg.batch_size, shuffle=True, num_workers=2
    )
    module = StegoModule(cfg, train.cache.dim)
    fast = steps_per_second(module, cached, args.steps)

    from unseg.backbones import create_backbone

    backbone = create_backbone(cfg.backbone, cfg.weights)
    images = DataLoader(
        ImagePairs(train.dataset, knn, cfg.input_size, backbone.mean, backbone.std, cfg.num_neighbors),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=2,
    )
    slow = steps_per_second(StegoModule(cfg, backbone.embed_dim, backbone), images, args.steps)
    print(
        f"# STEGO {cfg.backbone} on {cfg.dataset}/{cfg.train_split}, batch {cfg.batch_size}, "
        f"input {cfg.input_size}px, {torch.get_num_threads()} torch threads, {args.steps} timed steps"
    )
    print(f"cached features  {fast:6.2f} steps/s  {fast * cfg.batch_size:7.1f} images/s")
    print(f"images           {slow:6.2f} steps/s  {slow * cfg.batch_size:7.1f} images/s")
    print(f"speed-up         {fast / slow:6.1f}x")


if __name__ == "__main__":
    main()
