"""Clustering evaluation: standardise + PCA + k-means on frozen tokens, matched to labels.

K == #classes with Hungarian matching maximising IoU is the fully unsupervised protocol;
K > #classes with greedy many-to-one matching by precision is overclustering (Leopart's
rules, ``unseg docs evaluation``). Both are this one function with another K: the matching
follows from K unless given.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..clustering import StandardPCA, assign, kmeans, match, resolve_method
from ..clustering.kmeans import fit_centroids, unit_rows
from ..clustering.matching import CLUSTERING_MATCHING
from ..defaults import NITER, NREDO, OVERCLUSTERS, PCA_DIM, SEEDS
from ..errors import SettingError
from ..features.cache import FeatureCache
from ..features.transforms import upsample_labels
from ..features.upsample import Upsampling
from ..kinds import COUNT, INT_MAX
from .metrics import DEFAULT_ABSENT, ConfusionAccumulator, ScoresOverRuns, check_absent, scores_from_confusion


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
        return (
            f"K={self.k:<4d} {self.matching:16s} mIoU {self.miou_mean:5.1f} ± {self.miou_std:.1f}  "
            f"acc {self.accuracy_mean:5.1f} ± {self.accuracy_std:.1f}  (seeds {self.seeds})"
        )

    def to_dict(self) -> dict[str, Any]:
        scores = {k: v for k, v in asdict(self).items() if k not in ("labels", "mapping")}
        return {**scores, "miou_mean": self.miou_mean, "miou_std": self.miou_std, "accuracy_mean": self.accuracy_mean}


KEEP_BYTES = 1 << 30  # float32 tokens up to this size are read once and kept for the projection


def pca_settings(pca_dim: int | None, dim: int) -> dict[str, Any]:
    """What a projection of ``dim``-d features to ``pca_dim`` applies, as results record it: ``pca_dim`` is
    None when it only standardises (``pca_dim`` 0 / None, or at least ``dim``, which PCA cannot reduce), and
    ``pca_dim_asked`` keeps a value that was not applied. A negative ``pca_dim`` is a SettingError."""
    if pca_dim is not None and (isinstance(pca_dim, bool) or not isinstance(pca_dim, int) or pca_dim < 0):
        raise SettingError(
            f"pca_dim = {pca_dim!r} is not allowed: PCA dimensions are a whole number >= 0 "
            "(0 or None: no PCA) (--pca-dim)"
        )
    applied = pca_dim if pca_dim and pca_dim < dim else None
    return {"pca_dim": applied, **({"pca_dim_asked": pca_dim} if pca_dim and applied is None else {})}


def fit_projection(
    caches: Sequence[FeatureCache], pca_dim: int | None = PCA_DIM, keep_bytes: float = KEEP_BYTES
) -> tuple[StandardPCA, np.ndarray]:
    """Standardise + PCA fitted on the tokens of all ``caches``, and those tokens projected:
    (StandardPCA, (sum N*h*w, pca_dim) float32), in cache order.

    The caches are read once when their float32 tokens fit in ``keep_bytes`` (PCA fitted in
    float64: the numbers of earlier versions, bit for bit), else twice (fit, then project)
    one block at a time, with the PCA fitted in float32 (projections equal to ~1e-5, four
    times faster): memory is then the output plus one block.
    """

    def blocks() -> Iterator[np.ndarray]:
        return itertools.chain.from_iterable(c.iter_tokens() for c in caches)

    total = sum(len(c) * c.grid[0] * c.grid[1] for c in caches)
    kept = list(blocks()) if total * caches[0].dim * 4 <= keep_bytes else None
    pca = StandardPCA(pca_dim if pca_dim else caches[0].dim, np.float64 if kept is not None else np.float32)
    pca.fit(kept if kept is not None else blocks())
    out = np.empty((total, pca.out_dim), dtype=np.float32)
    start = 0
    for block in kept if kept is not None else blocks():
        out[start : start + len(block)] = pca.transform(block)
        start += len(block)
    return pca, out


def project_tokens(cache: FeatureCache, pca_dim: int | None = PCA_DIM, keep_bytes: float = KEEP_BYTES) -> np.ndarray:
    """All cached tokens standardised and PCA-reduced: (N*h*w, pca_dim) float32 (:func:`fit_projection`)."""
    return fit_projection([cache], pca_dim, keep_bytes)[1]


def cluster_labels(
    tokens: np.ndarray,
    grid: tuple[int, int],
    k: int,
    seed: int,
    niter: int = NITER,
    nredo: int = NREDO,
    spherical: bool = False,
) -> np.ndarray:
    """k-means cluster id of every token, as (N, h, w) maps."""
    result = kmeans(tokens, k, seed=seed, niter=niter, nredo=nredo, spherical=spherical)
    return result.labels.reshape(-1, *grid)


def score_labels(
    labels: np.ndarray,
    masks: np.ndarray,
    num_classes: int,
    k: int,
    matching: str = CLUSTERING_MATCHING,
    absent: str = DEFAULT_ABSENT,
) -> tuple[Any, np.ndarray]:
    """Nearest-upsample (N, h, w) cluster maps to the masks' size, match, score.

    Returns (SegmentationScores, cluster -> class mapping).
    """
    acc = ConfusionAccumulator(num_classes, k)
    size = masks.shape[-2:]
    for start in range(0, len(labels), 64):
        up = upsample_labels(torch.from_numpy(labels[start : start + 64]), size).numpy()
        acc.update(masks[start : start + 64], up)
    mapping, matched = match(acc.matrix, matching)
    return scores_from_confusion(matched, absent), mapping


def dense_confusions(
    tokens: np.ndarray,
    grid: tuple[int, int],
    centroids: dict[tuple[int, int], np.ndarray],
    spherical: bool,
    upsample: Upsampling,
    masks: np.ndarray,
    num_classes: int,
    guides: Iterable[torch.Tensor] | None = None,
) -> dict[tuple[int, int], tuple[Any, Any]]:
    """Each (K, seed) run's (first-seed label maps or None, confusion) from upsampled projected tokens.

    Image by image (bounded memory): its projected token map is upsampled to the target grid
    (``upsample.target``, default the masks' size), every pixel goes to its nearest centroid
    of each run, and the maps (nearest-resized to the masks if the sizes differ) are counted.
    Projection and upsampling commute (both affine, weights sum to one), so upsampling the
    PCA-space tokens equals projecting upsampled features. ``guides``: (3, H, W) images in
    cache order at the target size, for the guided upsampler.
    """
    h, w = grid
    size = upsample.target(grid, masks.shape[-2:])
    maps = tokens.reshape(len(masks), h, w, -1)
    guide_iter = iter(guides) if upsample.guided and guides is not None else None
    first: dict[int, int] = {}
    for k, seed in centroids:  # runs in order: the first seed of each K keeps its maps
        first.setdefault(k, seed)
    conf = {run: ConfusionAccumulator(num_classes, run[0]) for run in centroids}
    kept: dict[tuple[int, int], list[np.ndarray]] = {(k, s): [] for k, s in first.items()}
    for i in range(len(masks)):
        z = torch.from_numpy(np.ascontiguousarray(maps[i].transpose(2, 0, 1)))
        upsampled = upsample.apply(z, size, next(guide_iter) if guide_iter is not None else None)
        rows = np.ascontiguousarray(upsampled.flatten(1).T.numpy())
        for run, c in centroids.items():
            labels = assign(rows, c, spherical).reshape(1, *size)
            if run in kept:
                kept[run].append(labels[0].astype(np.int32))
            if size != masks.shape[-2:]:
                labels = upsample_labels(torch.from_numpy(labels), masks.shape[-2:]).numpy()
            conf[run].update(masks[i : i + 1], labels)
    return {run: (np.stack(kept[run]) if run in kept else None, conf[run].matrix) for run in centroids}


def check_clustering_settings(
    ks: Sequence[int], seeds: Sequence[int], pca_dim: int | None, niter: int, nredo: int
) -> None:
    """What can be checked before the tokens exist: each K and the iterations and restarts at least 1, at
    least one seed, a PCA dimension >= 0 (a SettingError naming the value otherwise)."""
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SettingError(f"K = {k} clusters is not allowed: K must be at least 1 (--k)")
    if not len(seeds):
        raise SettingError("no k-means seeds: give at least one (--seeds N with N >= 1)")
    pca_settings(pca_dim, INT_MAX)
    COUNT.check(niter, "niter (k-means iterations)")
    COUNT.check(nredo, "nredo (k-means restarts)")


def check_cluster_counts(ks: Sequence[int], seeds: Sequence[int], num_tokens: int) -> None:
    """Every K in 1..num_tokens and at least one seed, or a SettingError saying so (before any clustering)."""
    for k in ks:
        if not 1 <= k <= num_tokens:
            raise SettingError(
                f"K = {k} clusters is not allowed: K must be between 1 and the number of feature "
                f"tokens, {num_tokens} (--k)"
            )
    if not len(seeds):
        raise SettingError("no k-means seeds: give at least one (--seeds N with N >= 1)")


def evaluate_clustering(
    cache: FeatureCache,
    masks: np.ndarray,
    num_classes: int,
    ks: Sequence[int] = OVERCLUSTERS,
    seeds: Sequence[int] = range(SEEDS),
    pca_dim: int | None = PCA_DIM,
    niter: int = NITER,
    nredo: int = NREDO,
    matching: str = CLUSTERING_MATCHING,
    spherical: bool = False,
    absent: str = DEFAULT_ABSENT,
    upsample: Upsampling | None = None,
    guides: Iterable[torch.Tensor] | None = None,
) -> list[ClusteringResult]:
    """Cluster the cached tokens for every K and seed; score against ``masks`` (N, H, W), 255 = ignore.

    ``upsample`` (default none: token maps nearest-upsampled to the masks): k-means is fitted
    on the tokens as always, then every pixel of the upsampled feature maps is assigned
    (:func:`dense_confusions`; ``unseg docs upsampling``); ``guides`` feeds the guided upsampler.

    ``matching``: a rule of :data:`unseg.clustering.matching.METHODS`; ``absent``: one of
    :data:`unseg.evaluation.metrics.ABSENT_RULES`. Each result names the rule that ran.
    """
    if len(masks) != len(cache):
        raise ValueError(f"{len(masks)} masks for {len(cache)} cached images")
    check_clustering_settings(ks, seeds, pca_dim, niter, nredo)
    check_cluster_counts(ks, seeds, len(cache) * cache.grid[0] * cache.grid[1])
    check_absent(absent)
    pca = pca_settings(pca_dim, cache.dim)
    methods = [resolve_method(matching, num_classes, k) for k in ks]  # a bad rule fails before any clustering
    tokens = project_tokens(cache, pca_dim)
    if spherical:
        tokens = unit_rows(tokens)
    # every restart of every (K, seed) trains in parallel; labelling and scoring are cheap and run in turn
    runs = [(k, seed) for k in ks for seed in seeds]
    centroids = dict(zip(runs, fit_centroids(tokens, runs, niter, nredo, spherical), strict=True))
    upsample = upsample or Upsampling()
    if upsample.guided and guides is None:
        raise SettingError("the guided upsampler needs the images as guides (guides=...)")
    dense = (
        dense_confusions(tokens, cache.grid, centroids, spherical, upsample, masks, num_classes, guides)
        if upsample.active
        else None
    )
    results = []
    for k, method in zip(ks, methods, strict=True):
        settings = {
            "input_size": cache.meta["input_size"],
            "grid": list(cache.grid),
            "mask_size": list(masks.shape[-2:]),
            **pca,
            "niter": niter,
            "nredo": nredo,
            "spherical": spherical,
            "num_images": len(cache),
            "num_classes": num_classes,
            "ignore_index": 255,
            "absent_classes": absent,
            **upsample.describe(),
        }
        if upsample.active:
            settings["label_size"] = list(upsample.target(cache.grid, masks.shape[-2:]))
        result = ClusteringResult(k, method, list(seeds), [], [], [], settings)
        for seed in seeds:
            if dense is None:
                labels = assign(tokens, centroids[k, seed], spherical).reshape(-1, *cache.grid)
                scores, mapping = score_labels(labels, masks, num_classes, k, method, absent)
            else:
                labels, confusion = dense[k, seed]
                mapping, matched = match(confusion, method)
                scores = scores_from_confusion(matched, absent)
            if result.labels is None:
                result.labels, result.mapping = labels, mapping
            result.miou.append(scores.miou)
            result.pixel_accuracy.append(scores.pixel_accuracy)
            result.iou.append([float(v) for v in scores.iou])
        results.append(result)
    return results
