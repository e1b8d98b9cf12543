"""The evaluation protocols of SPEC §3 from names to numbers: what the CLI commands call.

Each function builds the backbone and dataset, extracts (or reuses) cached features
and returns result objects carrying their settings, so a printed number always states
its protocol.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backbones import Backbone, create_backbone
from ..datasets import SegmentationDataset, create_dataset
from ..features import FeatureCache, as_size, extract_features, require_complete
from ..features.cache import cached_masks
from ..features.upsample import Upsampling, iter_guides
from ..clustering.matching import CLUSTERING_MATCHING
from .clustering import ClusteringResult, evaluate_clustering
from .metrics import DEFAULT_ABSENT
from .heads import HeadResult, evaluate_head, head_settings, train_head


@dataclass
class Source:
    """Which backbone on which data: the arguments every protocol shares."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    download: bool = False
    role: str = "auto"
    trust_checkpoint: bool = False  # unpickle ``weights`` fully (runs code in the file): trusted files only
    dataset: str = "camvid"
    root: str | Path = "."
    dataset_options: dict[str, Any] = field(default_factory=dict)  # e.g. the folder dataset's masks, num_classes
    input_size: int | Sequence[int] = 448
    cache_dir: str | Path | None = None
    device: str = "auto"
    batch_size: int = 16
    num_workers: int = 2
    skip_corrupt: bool = False
    progress: bool = True

    def build_backbone(self) -> Backbone:
        return create_backbone(self.backbone, self.weights, download=self.download, role=self.role,
                               trust_checkpoint=self.trust_checkpoint)

    def build_dataset(self, split: str) -> SegmentationDataset:
        return create_dataset(self.dataset, self.root, split, **self.dataset_options)

    def features(self, backbone: Backbone, dataset: SegmentationDataset) -> FeatureCache:
        return require_complete(extract_features(backbone, dataset, self.input_size, cache_root=self.cache_dir,
                                                 batch_size=self.batch_size, device=self.device,
                                                 num_workers=self.num_workers, skip_corrupt=self.skip_corrupt,
                                                 progress=self.progress), dataset)

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "weights": self.weights or "default", "dataset": self.dataset,
                "input_size": list(as_size(self.input_size))}


def infer_num_classes(dataset: SegmentationDataset, masks: np.ndarray) -> int:
    """The dataset's class count, or (a folder of masks without one) the largest labelled id + 1."""
    if dataset.num_classes:
        return dataset.num_classes
    labelled = masks[masks != 255]
    return int(labelled.max()) + 1 if labelled.size else 0


def clustering_protocol(source: Source, split: str = "val", ks: Sequence[int] = (100,), seeds: Sequence[int] = range(5),
                        mask_size: int | Sequence[int] = 100, pca_dim: int | None = 50, niter: int = 100,
                        nredo: int = 5, matching: str = CLUSTERING_MATCHING,
                        absent: str = DEFAULT_ABSENT, upsample: Upsampling | None = None) -> list[ClusteringResult]:
    """Overclustering (K > #classes, greedy matching) and K = #classes (Hungarian) on a frozen backbone.

    ``upsample``: assign clusters on upsampled features (docs/upsampling.md); the guided
    upsampler reads the split's images, resized to the target grid, one at a time.
    """
    backbone = source.build_backbone()
    dataset = source.build_dataset(split)
    cache = source.features(backbone, dataset)
    masks = cached_masks(cache, dataset, as_size(mask_size))
    guides = None
    if upsample is not None and upsample.guided:
        guides = iter_guides(dataset, cache.ids, upsample.target(cache.grid, masks.shape[-2:]))
    results = evaluate_clustering(cache, masks, infer_num_classes(dataset, masks), ks=ks, seeds=seeds,
                                  pca_dim=pca_dim, niter=niter, nredo=nredo, matching=matching, absent=absent,
                                  upsample=upsample, guides=guides)
    for r in results:
        r.settings.update(source.describe(), split=split)
    return results


def head_protocol(source: Source, head: str = "linear", train_split: str = "train", val_split: str = "val",
                  mask_size: int | Sequence[int] = 100, eval_mask_size: int | Sequence[int] | None = None,
                  augment: bool = True, seed: int = 0, **train_kwargs: Any) -> HeadResult:
    """Train a linear / FCN head on ``train_split`` and score it on ``val_split``.

    ``eval_mask_size`` defaults to the input size (SPEC: evaluate at 448x448 masks).
    """
    backbone = source.build_backbone()
    train, val = source.build_dataset(train_split), source.build_dataset(val_split)
    msize = as_size(mask_size)
    emsize = as_size(eval_mask_size) if eval_mask_size is not None else as_size(source.input_size)
    val_cache = source.features(backbone, val)
    val_masks = cached_masks(val_cache, val, emsize)
    num_classes = infer_num_classes(val, val_masks)
    kwargs: dict[str, Any] = {}
    if not augment:
        train_cache = source.features(backbone, train)
        kwargs = {"train_cache": train_cache, "train_masks": cached_masks(train_cache, train, msize)}
    model = train_head(backbone, train, num_classes, head=head, input_size=source.input_size, mask_size=msize,
                       augment=augment, device=source.device, seed=seed, num_workers=source.num_workers,
                       **kwargs, **train_kwargs)
    scores, predictions = evaluate_head(model, val_cache, val_masks, num_classes, device=source.device)
    settings = {**source.describe(), "train_split": train_split, "val_split": val_split,
                "train_mask_size": list(msize), "eval_mask_size": list(emsize), "augment": augment, "seed": seed,
                **head_settings(head, **train_kwargs)}
    return HeadResult(head, scores.miou, scores.pixel_accuracy, [float(v) for v in scores.iou], settings,
                      predictions)
