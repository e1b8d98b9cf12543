"""Clustering evaluation (SPEC §3): standardise + PCA + k-means on frozen tokens, matched to labels.

K == #classes with Hungarian matching is the fully unsupervised protocol; K > #classes
with greedy many-to-one matching by precision is overclustering. Both are this one
function with another K: the matching follows from K unless given.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..clustering import StandardPCA, kmeans, match, resolve_method
from ..features.cache import FeatureCache
from ..features.transforms import upsample_labels
from .metrics import ConfusionAccumulator, ScoresOverRuns, scores_from_confusion


@dataclass
class ClusteringResult(ScoresOverRuns):
    """Scores of one K over several seeds, with the protocol that produced them."""

    k: int
    matching: str
    seeds: list[int]
    miou: list[float]
    pixel_accuracy: list[float]
    iou: list[list[float]]  # per seed, per class
    settings: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = field(default=None, repr=False)  # first seed's (N, h, w) cluster maps
    mapping: np.ndarray | None = field(default=None, repr=False)  # first seed's cluster -> class

    def summary(self) -> str:
        return (f"K={self.k:<4d} {self.matching:9s} mIoU {self.miou_mean:5.1f} ± {self.miou_std:.1f}  "
                f"acc {self.accuracy_mean:5.1f} ± {self.accuracy_std:.1f}  (seeds {self.seeds})")

    def to_dict(self) -> dict[str, Any]:
        scores = {k: v for k, v in asdict(self).items() if k not in ("labels", "mapping")}
        return {**scores, "miou_mean": self.miou_mean, "miou_std": self.miou_std, "accuracy_mean": self.accuracy_mean}


def project_tokens(cache: FeatureCache, pca_dim: int | None = 50) -> np.ndarray:
    """All cached tokens standardised and PCA-reduced: (N*h*w, pca_dim) float32, streamed from disk."""
    pca = StandardPCA(pca_dim if pca_dim else cache.dim).fit(cache.iter_tokens())
    return np.concatenate([pca.transform(t) for t in cache.iter_tokens()])


def cluster_labels(tokens: np.ndarray, grid: tuple[int, int], k: int, seed: int, niter: int = 100,
                   nredo: int = 5, spherical: bool = False) -> np.ndarray:
    """k-means cluster id of every token, as (N, h, w) maps."""
    result = kmeans(tokens, k, seed=seed, niter=niter, nredo=nredo, spherical=spherical)
    return result.labels.reshape(-1, *grid)


def score_labels(labels: np.ndarray, masks: np.ndarray, num_classes: int, k: int,
                 matching: str = "auto") -> tuple[Any, np.ndarray]:
    """Nearest-upsample (N, h, w) cluster maps to the masks' size, match, score.

    Returns (SegmentationScores, cluster -> class mapping).
    """
    acc = ConfusionAccumulator(num_classes, k)
    size = masks.shape[-2:]
    for start in range(0, len(labels), 64):
        up = upsample_labels(torch.from_numpy(labels[start:start + 64]), size).numpy()
        acc.update(masks[start:start + 64], up)
    mapping, matched = match(acc.matrix, matching)
    return scores_from_confusion(matched), mapping


def evaluate_clustering(cache: FeatureCache, masks: np.ndarray, num_classes: int,
                        ks: Sequence[int] = (100,), seeds: Sequence[int] = range(5), pca_dim: int | None = 50,
                        niter: int = 100, nredo: int = 5, matching: str = "auto",
                        spherical: bool = False) -> list[ClusteringResult]:
    """Cluster the cached tokens for every K and seed; score against ``masks`` (N, H, W), 255 = ignore."""
    if len(masks) != len(cache):
        raise ValueError(f"{len(masks)} masks for {len(cache)} cached images")
    tokens = project_tokens(cache, pca_dim)
    results = []
    for k in ks:
        method = resolve_method(matching, num_classes, k)
        settings = {"input_size": cache.meta["input_size"], "grid": list(cache.grid), "mask_size": list(masks.shape[-2:]),
                    "pca_dim": pca_dim, "niter": niter, "nredo": nredo, "spherical": spherical,
                    "num_images": len(cache), "num_classes": num_classes, "ignore_index": 255}
        result = ClusteringResult(k, method, list(seeds), [], [], [], settings)
        for seed in seeds:
            labels = cluster_labels(tokens, cache.grid, k, seed, niter, nredo, spherical)
            scores, mapping = score_labels(labels, masks, num_classes, k, method)
            if result.labels is None:
                result.labels, result.mapping = labels, mapping
            result.miou.append(scores.miou)
            result.pixel_accuracy.append(scores.pixel_accuracy)
            result.iou.append([float(v) for v in scores.iou])
        results.append(result)
    return results
