"""A folder of photos segmented image by image, with one vocabulary of segment groups across the folder.

Each image is segmented on its own (:mod:`unseg.unsupervised.spectral`); then every segment of
every image is described by its mean feature (standardised and PCA-projected with statistics of
the folder's tokens, L2-normalised) and the descriptors are clustered (Ward) into groups: the
same kind of region gets the same group, and so the same label and colour, in every photo.
The number of groups is given, or the largest number of segments of one image (so that any one
image could keep its segments apart).

Work is split so that memory does not grow with the photos' size: :func:`plan_folder` works on
the token grid only (segments, groups); :meth:`FolderPlan.render` then brings one image at a
time to its own resolution with the image as the guide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage

from ..clustering import StandardPCA, kmeans
from ..clustering.kmeans import unit_rows
from ..defaults import PCA_DIM
from ..errors import SettingError
from ..features.cache import FeatureCache
from ..threads import parallel_map, serial_blas
from .spectral import SpectralSettings, background_segments, merge_segments, oversegment, refine_segments, segment_sums

__all__ = ["FolderPlan", "ImageSegmentation", "plan_folder", "fit_vocabulary", "PCA_TOKENS", "WARD_POINTS"]

PCA_TOKENS = 1 << 14
"""At most this many tokens (a fixed stride through every image) fit the descriptors' PCA."""
WARD_POINTS = 4096
"""Ward's linkage holds N²/2 distances: above this many segments, k-means reduces them first."""


@dataclass
class ImageSegmentation:
    """One image at its own resolution: ``segments`` (H, W) ids 0..m-1 of its own segments, the
    ``groups`` (m,) each belongs to in the folder's vocabulary, and which are ``background`` (m,)."""

    segments: np.ndarray
    groups: np.ndarray
    background: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """(H, W) group ids: the folder-wide labels."""
        return self.groups[self.segments]

    @property
    def foreground(self) -> np.ndarray:
        """(H, W) bool: pixels of segments that are not background."""
        return ~self.background[self.segments]


@dataclass
class FolderPlan:
    """Every image's segments on its token grid and their groups: what :func:`plan_folder` decides."""

    settings: SpectralSettings
    segments: list[np.ndarray]  # (h, w) merged segment ids per image, in cache order
    groups: list[np.ndarray]  # (m_i,) group of each segment
    num_groups: int
    summary: dict[str, Any] = field(default_factory=dict)

    def render(self, index: int, guide: torch.Tensor) -> ImageSegmentation:
        """Image ``index`` at the guide's resolution (guide (3, H, W), RGB in [0, 1]): boundaries on its
        edges, then the border rule for the background."""
        segments = refine_segments(self.segments[index], guide, self.settings)
        k = len(self.groups[index])
        return ImageSegmentation(
            segments, self.groups[index], background_segments(segments, k, self.settings.background_ratio)
        )


def fit_vocabulary(descriptors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N,) group of each (N, d) segment descriptor: Ward's agglomerative clustering of the L2-normalised
    descriptors, cut into ``k`` groups (deterministic; on CamVid it groups better than k-means, whose
    result varies with the seed: ``unseg docs photos``). Above :data:`WARD_POINTS` descriptors, k-means
    (``seed``) first reduces them to that many centroids, and Ward groups those."""
    if not 1 <= k <= len(descriptors):
        raise SettingError(f"{k} groups cannot be made from {len(descriptors)} segments; give 1..{len(descriptors)}")
    x = unit_rows(descriptors)
    if k == 1:
        return np.zeros(len(x), np.int64)
    micro = None
    if len(x) > WARD_POINTS:
        fit = kmeans(x, WARD_POINTS, seed=seed, niter=20, nredo=1)
        x, micro = fit.centroids, fit.labels
    groups = fcluster(linkage(x.astype(np.float64), method="ward"), k, criterion="maxclust") - 1
    return groups if micro is None else groups[micro]


def plan_folder(
    cache: FeatureCache,
    settings: SpectralSettings | None = None,
    groups: int | None = None,
    seed: int = 0,
    pca_dim: int | None = PCA_DIM,
    threads: int | None = None,
) -> FolderPlan:
    """Segment every cached image on its own and group the segments across the folder.

    ``groups``: the vocabulary's size (default: the largest number of segments of one image).
    ``seed``: of every k-means (each image's over-segmentation, the vocabulary).
    ``pca_dim``: the descriptors' projection (None: standardised only). Images run side by side on
    ``threads`` (default the thread policy's), each on one thread: results do not depend on it.
    """
    settings = settings or SpectralSettings()
    n = len(cache)
    if n == 0:
        raise SettingError("no images to segment")
    stride = max(1, math.ceil(n * cache.grid[0] * cache.grid[1] / PCA_TOKENS))

    def first_pass(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        features = cache.features(i)
        over = oversegment(features, settings, seed)
        sums, counts = segment_sums(features, over)
        return over, sums, counts, features.reshape(len(features), -1).T[::stride]

    with serial_blas():
        passes = parallel_map(first_pass, range(n), threads, per_job=1)
    # the folder's mean token: the reference the merging rule centres segment means on
    centre = sum(p[1].sum(0) for p in passes) / sum(p[2].sum() for p in passes)
    segments, means, sizes = [], [], []
    for over, sums, counts, _ in passes:
        lut = merge_segments(
            over, sums, counts, centre, settings.merge_threshold, settings.segments, settings.min_tokens
        )
        merged_sums = np.zeros((lut.max() + 1, sums.shape[1]))
        np.add.at(merged_sums, lut, sums)
        merged_counts = np.bincount(lut, weights=counts).astype(np.int64)
        segments.append(lut[over].astype(np.int32))
        means.append(merged_sums / merged_counts[:, None])
        sizes.append(len(merged_counts))
    pca = StandardPCA(pca_dim if pca_dim else cache.dim).fit([np.concatenate([p[3] for p in passes])])
    descriptors = pca.transform(np.concatenate(means).astype(np.float32))
    k = groups if groups is not None else max(sizes)
    flat = fit_vocabulary(descriptors, k, seed)
    bounds = np.cumsum([0] + sizes)
    summary = {
        "segments_per_image": {"median": float(np.median(sizes)), "min": int(min(sizes)), "max": int(max(sizes))},
        "total_segments": int(bounds[-1]),
        "groups": k,
        "groups_given": groups is not None,
        "pca_dim": pca_dim,
        "pca_tokens": int(sum(len(p[3]) for p in passes)),
        "seed": seed,
        **settings.describe(),
    }
    return FolderPlan(settings, segments, [flat[a:b] for a, b in pairwise(bounds)], k, summary)
