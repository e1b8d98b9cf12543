"""Cluster-based foreground extraction, CBFE (Leopart, ``unseg docs methods``).

A backbone's saliency is a noisy foreground cue: sharp on objects, spotty at their
borders. CBFE cleans it with clusters: spherical k-means (k = 200) on the tokens of
train and val together, each cluster's precision against the noisy mask averaged over
the images holding it, and the clusters above a precision threshold are foreground.
The threshold is the only choice that sees labels: cuts sending 55%-75% of the
clusters (sorted by precision) to background are scored by their foreground IoU on the
train split, and the best cut's precision, rounded to 0.05, is applied to val.

Facts carried over from the authors' ``fully_unsup_seg.py``: the noisy mask keeps the
top 65% of the (7x7, sigma 0.6 blurred) saliency mass and drops components of <= 2
tokens; foreground IoU is averaged over images; among equally good cuts the last one
wins; the threshold is rounded to the nearest of 0, 0.05, ..., 0.95; val clusters are
judged by their precision on the val images. Two choices are ours: precisions are
counted on the token grid (the authors count on the 28x28 maps nearest-upsampled to
100x100, which weights tokens by 3 or 4 pixels per axis), and pixels with an ignore
label are left out of the foreground IoU (the authors count VOC's 255 boundary as
foreground, which elsewhere, e.g. CamVid's void, would be wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..clustering import KMeansResult, kmeans
from ..datasets.base import IGNORE_INDEX
from ..defaults import NITER, NREDO
from ..features.saliency import foreground_mask
from ..features.transforms import upsample_labels

__all__ = [
    "DEFAULT_FG_K",
    "NOISY_MASS",
    "cluster_precisions",
    "ThresholdSearch",
    "search_threshold",
    "round_threshold",
    "foreground_iou",
    "foreground_targets",
    "saliency_clusters",
    "ForegroundExtraction",
    "cluster_based_foreground",
]

DEFAULT_FG_K = 200  # spherical k-means clusters (the authors')

NOISY_MASS = 0.65  # share of the saliency mass kept as noisy foreground (authors' fully unsupervised setting)
CUT_RANGE = (0.55, 0.75)  # share of clusters sent to background by the candidate cuts
THRESHOLD_STEP = 0.05


def cluster_precisions(clusters: np.ndarray, foreground: np.ndarray, k: int) -> np.ndarray:
    """(k,) precision of each cluster against a (noisy) foreground mask, averaged over the images
    holding the cluster; 0 for a cluster in no image. Inputs are (N, h, w) ids and bools."""
    clusters = np.asarray(clusters, dtype=np.int64).reshape(len(clusters), -1)
    foreground = np.asarray(foreground, dtype=bool).reshape(clusters.shape)
    index = (np.arange(len(clusters))[:, None] * k + clusters).ravel()
    total = np.bincount(index, minlength=len(clusters) * k).reshape(-1, k)
    hits = np.bincount(index, weights=foreground.ravel(), minlength=len(clusters) * k).reshape(-1, k)
    per_image = np.divide(hits, total, out=np.zeros_like(hits), where=total > 0)
    holding = (total > 0).sum(axis=0)
    return np.divide(per_image.sum(axis=0), holding, out=np.zeros(k), where=holding > 0)


def round_threshold(value: float, step: float = THRESHOLD_STEP) -> float:
    """Nearest of 0, step, ..., 1 - step (the authors' candidate thresholds); ties go down."""
    candidates = np.round(np.arange(0, 1 - step / 2, step), 10)
    return float(candidates[np.argmin(np.abs(candidates - value))])


@dataclass
class ThresholdSearch:
    """Candidate cuts (number of clusters sent to background) with their train foreground IoU (%)."""

    cuts: list[int]
    ious: list[float]
    cut: int  # the best cut
    threshold: float  # its precision, rounded

    def to_dict(self) -> dict[str, Any]:
        return {"cuts": self.cuts, "ious": self.ious, "cut": self.cut, "threshold": self.threshold}


def _foreground_counts(clusters: np.ndarray, gt_foreground: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image and cluster: labelled pixels that are ground-truth foreground, and all labelled pixels."""
    n = len(clusters)
    up = upsample_labels(torch.from_numpy(np.asarray(clusters, dtype=np.int64)), gt_foreground.shape[-2:]).numpy()
    labelled = gt_foreground != IGNORE_INDEX
    index = np.arange(n)[:, None, None] * k + up
    fg = np.bincount(index[labelled & (gt_foreground == 1)], minlength=n * k).reshape(n, k)
    total = np.bincount(index[labelled], minlength=n * k).reshape(n, k)
    return fg, total


def _mean_iou(inter: np.ndarray, union: np.ndarray) -> float:
    """Per-image IoU (%) averaged over the images whose union is not empty."""
    valid = union > 0
    return float((inter[valid] / union[valid]).mean() * 100) if valid.any() else float("nan")


def search_threshold(
    precisions: np.ndarray, clusters: np.ndarray, gt_foreground: np.ndarray, cut_range: tuple[float, float] = CUT_RANGE
) -> ThresholdSearch:
    """Pick the precision threshold from labelled (train) images.

    ``clusters`` (N, h, w) cluster ids; ``gt_foreground`` (N, H, W) uint8: 1 foreground,
    0 background, 255 ignored. Cut c sends the c least precise clusters to background; cuts
    ``int(0.55 k) .. int(0.75 k) - 1`` are scored by foreground IoU averaged over images
    (images with an empty union are left out).
    """
    precisions = np.asarray(precisions, dtype=np.float64)
    k = len(precisions)
    order = np.argsort(precisions, kind="stable")
    cuts = list(range(int(cut_range[0] * k), int(cut_range[1] * k)))
    if not cuts:
        raise ValueError(f"k={k} clusters leave no cut between {cut_range[0]:.0%} and {cut_range[1]:.0%}")
    fg, total = _foreground_counts(clusters, np.asarray(gt_foreground), k)
    # kept (foreground) clusters for cut c are order[c:]: suffix sums over the sorted clusters
    inter = np.cumsum(fg[:, order][:, ::-1], axis=1)[:, ::-1]
    pred = np.cumsum(total[:, order][:, ::-1], axis=1)[:, ::-1]
    gt = fg.sum(axis=1)
    ious = [_mean_iou(inter[:, cut], gt + pred[:, cut] - inter[:, cut]) for cut in cuts]
    scores = np.nan_to_num(np.array(ious), nan=-1.0)
    best = len(cuts) - 1 - int(np.argmax(scores[::-1]))  # the last of equally good cuts, as the authors
    cut = cuts[best]
    return ThresholdSearch(cuts, ious, cut, round_threshold(float(precisions[order][cut])))


def foreground_iou(masks: np.ndarray, gt_foreground: np.ndarray) -> float:
    """Per-image foreground IoU (%) of (N, h, w) token-grid masks against (N, H, W) 1/0/255 targets."""
    fg, total = _foreground_counts(np.asarray(masks, dtype=np.int64), np.asarray(gt_foreground), 2)
    return _mean_iou(fg[:, 1], fg[:, 0] + total[:, 1])  # union: ground-truth fg missed + predicted fg


def foreground_targets(masks: np.ndarray, background: list[int]) -> np.ndarray:
    """Class masks -> 1 foreground / 0 background (classes in ``background``) / 255 ignored."""
    masks = np.asarray(masks)
    out = np.where(np.isin(masks, background), 0, 1).astype(np.uint8)
    out[masks == IGNORE_INDEX] = IGNORE_INDEX
    return out


@dataclass
class ForegroundExtraction:
    """CBFE's output: per-image foreground masks on the token grid (train images first, then val)."""

    masks: np.ndarray  # (N, h, w) bool
    threshold: float
    search: ThresholdSearch
    clusters: np.ndarray = field(repr=False)  # (N, h, w) spherical cluster ids
    centroids: np.ndarray = field(repr=False)  # (k, D) unit-norm
    precisions_train: np.ndarray = field(repr=False)
    precisions_val: np.ndarray = field(repr=False)
    foreground_iou_train: float = float("nan")  # % IoU of the thresholded train masks (per-image mean)

    def settings(self) -> dict[str, Any]:
        k = len(self.centroids)
        return {
            "k": k,
            "spherical": True,
            "threshold": self.threshold,
            "cut": self.search.cut,
            "foreground_clusters_train": int((self.precisions_train >= self.threshold).sum()),
            "foreground_clusters_val": int((self.precisions_val >= self.threshold).sum()),
            "foreground_iou_train": self.foreground_iou_train,
            "noisy_mass": NOISY_MASS,
            "cut_range": list(CUT_RANGE),
        }


def saliency_clusters(
    tokens: np.ndarray,
    grid: tuple[int, int],
    saliency: np.ndarray,
    k: int = DEFAULT_FG_K,
    seed: int = 0,
    niter: int = NITER,
    nredo: int = NREDO,
) -> tuple[KMeansResult, np.ndarray, np.ndarray]:
    """CBFE's unlabelled half: spherical k-means of the tokens of (N, h, w) ``saliency``'s images,
    as (fit, (N, h, w) cluster maps, (N, h, w) noisy foreground masks)."""
    n = len(saliency)
    if len(tokens) != n * grid[0] * grid[1]:
        raise ValueError(f"{len(tokens)} tokens do not fit {n} images of {grid[0]}x{grid[1]}")
    fit = kmeans(tokens, k, seed=seed, niter=niter, nredo=nredo, spherical=True)
    return (
        fit,
        fit.labels.reshape(n, *grid),
        foreground_mask(torch.from_numpy(np.asarray(saliency, np.float32)), keep_mass=NOISY_MASS).bool().numpy(),
    )


def cluster_based_foreground(
    tokens: np.ndarray,
    grid: tuple[int, int],
    saliency: np.ndarray,
    num_train: int,
    gt_foreground_train: np.ndarray,
    k: int = DEFAULT_FG_K,
    seed: int = 0,
    niter: int = NITER,
    nredo: int = NREDO,
) -> ForegroundExtraction:
    """CBFE on ``tokens`` ((N*h*w, D), the ``num_train`` train images first, then val).

    ``saliency`` (N, h, w) is the backbone's; ``gt_foreground_train`` (num_train, H, W) as in
    :func:`search_threshold`. The threshold found on train is applied to val clusters by their
    precision on val.
    """
    n = len(saliency)
    fit, clusters, noisy = saliency_clusters(tokens, grid, saliency, k, seed, niter, nredo)
    train, val = slice(0, num_train), slice(num_train, n)
    prec_train = cluster_precisions(clusters[train], noisy[train], k)
    search = search_threshold(prec_train, clusters[train], gt_foreground_train)
    prec_val = cluster_precisions(clusters[val], noisy[val], k) if n > num_train else np.zeros(k)
    masks = np.concatenate(
        [(prec_train >= search.threshold)[clusters[train]], (prec_val >= search.threshold)[clusters[val]]]
    )
    return ForegroundExtraction(
        masks,
        search.threshold,
        search,
        clusters,
        fit.centroids,
        prec_train,
        prec_val,
        foreground_iou(masks[train], gt_foreground_train),
    )
