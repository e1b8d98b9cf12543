"""Leopart training speed: one optimisation step split by component.

Components, timed separately on the same batches (CUDA synchronised): crops (multi-crop
and augmentation of a batch, in this process; training overlaps them with compute in
loader workers), forward (student on every crop, teacher on the global crops), Sinkhorn
(foreground masks, queue, Sinkhorn-Knopp), RoI-align (aligned targets and predictions,
cross-entropy), backward (backward, AdamW step, EMA update). Run:
`python benchmarks/bench_leopart.py --root ../shared/data/camvid --steps 3`.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import default_collate

from unseg.datasets import create_dataset
from unseg.features import resolve_device
from unseg.methods.leopart import CropConfig, LeopartConfig, MultiCrop, MultiCropDataset, build_module, leopart_loss
from unseg.methods.leopart.model import param_groups

COMPONENTS = ("crops", "forward", "sinkhorn", "roi_align", "backward")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="camvid")
    p.add_argument("--root", default="../shared/data/camvid")
    p.add_argument("--split", default="train")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", help="initial weights (default: the offline backbone's, else random)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--mask", default="fg", choices=["fg", "bg", "all"])
    p.add_argument("--precision", default="32", choices=["32", "bf16", "16"])
    p.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    weights = args.weights or (None if args.backbone == "efficientnet_lite0" else "random")
    cfg = LeopartConfig(
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        backbone=args.backbone,
        weights=weights,
        batch_size=args.batch_size,
        mask=args.mask,
        crops=CropConfig(global_size=args.global_size, local_size=args.local_size),
    )
    device = resolve_device(args.device)
    torch.manual_seed(0)
    module = build_module(cfg).to(device)
    module.on_fit_start()  # moves the queue
    backbone = module.model.backbone
    data = MultiCropDataset(
        create_dataset(cfg.dataset, cfg.root, cfg.split),
        MultiCrop(cfg.crops, backbone.mean, backbone.std, backbone.stride),
        cfg.seed,
    )
    optimizer = torch.optim.AdamW(param_groups(module.model, cfg.lr_backbone, cfg.lr_head, cfg.weight_decay))
    dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[args.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(name: str, record: bool) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize()
        if record:
            seconds[name] += time.perf_counter() - start

    rng = np.random.default_rng(0)
    for step in range(args.steps + 1):  # step 0 warms up and is not recorded
        record = step > 0
        with timed("crops", record):
            indices = rng.choice(len(data), cfg.batch_size, replace=False)
            batch = default_collate([data[(step, int(i))] for i in indices])
        batch = {k: [c.to(device) for c in v] if k == "crops" else v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            with timed("forward", record):
                teacher, predictions = module.forward_nets(batch)
            with timed("sinkhorn", record):
                targets, masks = module.targets(teacher)
            with timed("roi_align", record):
                loss = leopart_loss(
                    targets,
                    predictions,
                    batch["boxes_global"],
                    batch["boxes_crop"],
                    masks,
                    module.stride,
                    cfg.roi_size,
                    cfg.temperature,
                )
        with timed("backward", record):
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            module.update_teacher(cfg.momentum_teacher)

    total = sum(seconds.values())
    compute = total - seconds["crops"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"# Leopart step: {cfg.backbone} on {cfg.dataset}/{cfg.split}, batch {cfg.batch_size}, crops "
        f"{cfg.crops.num_global}x{cfg.crops.global_size} + {cfg.crops.num_local}x{cfg.crops.local_size}, mask "
        f"{cfg.mask}, precision {args.precision}, {where}, {platform.machine()}, {args.steps} timed steps"
    )
    for name in COMPONENTS:
        per_step = seconds[name] / args.steps
        print(f"{name:10s} {1000 * per_step:9.1f} ms/step  {100 * seconds[name] / total:5.1f} %")
    print(
        f"{'step':10s} {1000 * compute / args.steps:9.1f} ms/step without crops  "
        f"{cfg.batch_size * args.steps / compute:7.2f} images/s"
    )
    print(
        f"{'':10s} {1000 * total / args.steps:9.1f} ms/step with crops     "
        f"{cfg.batch_size * args.steps / total:7.2f} images/s"
    )


if __name__ == "__main__":
    main()
