"""Clustering: standardise + PCA, faiss k-means, and cluster-to-class matching (``unseg docs evaluation``)."""

from __future__ import annotations

from .kmeans import KMeansResult, StandardPCA, assign, kmeans
from .matching import UNMATCHED, apply_matching, greedy_match, hungarian_match, iou_matrix, match, resolve_method

__all__ = [
    "KMeansResult",
    "StandardPCA",
    "assign",
    "kmeans",
    "UNMATCHED",
    "apply_matching",
    "greedy_match",
    "hungarian_match",
    "iou_matrix",
    "match",
    "resolve_method",
]
