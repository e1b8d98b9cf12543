"""Cluster-to-class matching: the project's only matching code (rules: ``unseg docs evaluation``).

Two one-to-one Hungarian rules, because the papers differ: ``hungarian-iou`` maximises the
summed IoU of matched pairs (Leopart's clustering protocol), ``hungarian-pixels`` the
number of matched pixels (STEGO's cluster probe). ``greedy`` is Leopart's many-to-one
overclustering rule; ``auto`` picks ``hungarian-iou`` for K <= C, else ``greedy``.

A mapping is an int64 array of length K (clusters): ``mapping[k]`` is the class of cluster
k, or :data:`UNMATCHED` (-1) for a cluster that no class took (Hungarian with K > C) or
that holds no pixel (greedy). Unmatched clusters' pixels are not dropped: the matched
confusion keeps them in an extra last column, so they count as errors of their
ground-truth class (in its IoU denominator) and of pixel accuracy.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import UnsegError

__all__ = [
    "UNMATCHED",
    "METHODS",
    "class_predictions",
    "CLUSTERING_MATCHING",
    "STEGO_MATCHING",
    "MatchingError",
    "iou_matrix",
    "hungarian_match",
    "pixel_match",
    "greedy_match",
    "apply_matching",
    "resolve_method",
    "match",
]

UNMATCHED = -1
"""The class of a cluster that no class took, in a mapping."""
METHODS = ("auto", "hungarian-iou", "hungarian-pixels", "greedy")
"""The matching rules (the module docstring says what each maximises)."""
# each protocol's default rule, defined once (the CLI shows these)
CLUSTERING_MATCHING = "auto"
"""Leopart's clustering protocol: hungarian-iou for K <= C, else greedy."""
STEGO_MATCHING = "hungarian-pixels"
"""STEGO's cluster probe (its ``UnsupervisedMetrics``)."""


class MatchingError(UnsegError, ValueError):
    """An unknown matching rule name."""


def _as_confusion(conf: np.ndarray) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2 or (conf < 0).any():
        raise ValueError(f"a confusion must be a non-negative (classes, clusters) matrix, got shape {conf.shape}")
    return conf


def iou_matrix(conf: np.ndarray) -> np.ndarray:
    """(C, K) IoU of every class with every cluster; 0 where both are empty."""
    conf = _as_confusion(conf).astype(np.float64)
    union = conf.sum(axis=1, keepdims=True) + conf.sum(axis=0, keepdims=True) - conf
    return np.divide(conf, union, out=np.zeros_like(conf), where=union > 0)


def hungarian_match(conf: np.ndarray) -> np.ndarray:
    """One-to-one cluster -> class mapping maximising the summed IoU (any K, C): Leopart's rule.

    With K > C the K - C clusters left over map to UNMATCHED; with K < C some classes
    get no cluster (their IoU is then 0 where they occur). Solved as Leopart does, by
    minimising 1 - IoU, so ties between equal optima resolve the same way.
    """
    iou = iou_matrix(conf)
    classes, clusters = linear_sum_assignment(1 - iou)
    mapping = np.full(iou.shape[1], UNMATCHED, dtype=np.int64)
    mapping[clusters] = classes
    return mapping


def pixel_match(conf: np.ndarray) -> np.ndarray:
    """One-to-one cluster -> class mapping maximising the matched pixels (any K, C): STEGO's rule.

    The assignment maximises the summed confusion counts of matched pairs (the pixel
    accuracy), not their IoU, so a large class can take the cluster a small class fits
    best. Solved on the (clusters, classes) histogram when K = C, as STEGO does, so ties
    resolve the same way; unmatched clusters as in :func:`hungarian_match`.
    """
    conf = _as_confusion(conf)
    c, k = conf.shape
    if k == c:
        clusters, classes = linear_sum_assignment(conf.T, maximize=True)
    else:
        classes, clusters = linear_sum_assignment(conf, maximize=True)
    mapping = np.full(k, UNMATCHED, dtype=np.int64)
    mapping[clusters] = classes
    return mapping


def greedy_match(conf: np.ndarray) -> np.ndarray:
    """Many-to-one mapping: each cluster -> the class covering most of its pixels (highest precision).

    Leopart's overclustering matching for K > C. A cluster with no pixels maps to UNMATCHED
    (it predicts nothing, so this changes no score); ties go to the lower class id.
    """
    conf = _as_confusion(conf)
    mapping = conf.argmax(axis=0).astype(np.int64)
    mapping[conf.sum(axis=0) == 0] = UNMATCHED
    return mapping


def apply_matching(conf: np.ndarray, mapping: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(C, C + 1) confusion with clusters merged into classes per ``mapping``.

    Column c sums the clusters mapped to class c; the last column sums the UNMATCHED
    clusters, so their pixels stay in the row totals and count as errors in
    :func:`unseg.evaluation.metrics.scores_from_confusion`. ``num_classes``, if given,
    must equal the confusion's row count (a guard against a transposed matrix).
    """
    conf = _as_confusion(conf)
    mapping = np.asarray(mapping, dtype=np.int64)
    c, k = conf.shape
    if num_classes is not None and num_classes != c:
        raise ValueError(f"confusion has {c} class rows, not num_classes={num_classes}")
    if mapping.shape != (k,):
        raise ValueError(f"mapping of shape {mapping.shape} does not fit {k} clusters")
    if k and (mapping.min() < UNMATCHED or mapping.max() >= c):
        bad = mapping[(mapping < UNMATCHED) | (mapping >= c)][0]
        raise ValueError(f"mapping sends a cluster to class {bad}, outside 0..{c - 1} (or {UNMATCHED} for unmatched)")
    merge = np.zeros((k, c + 1), dtype=conf.dtype)
    merge[np.arange(k), np.where(mapping == UNMATCHED, c, mapping)] = 1
    return conf @ merge


def resolve_method(method: str, num_classes: int, num_clusters: int) -> str:
    """The rule that runs: ``auto`` is ``hungarian-iou`` if K <= C, else ``greedy`` (Leopart's protocol)."""
    if method not in METHODS:
        raise MatchingError(f"matching rule {method!r} is not one of {', '.join(METHODS)}")
    if method == "auto":
        return "hungarian-iou" if num_clusters <= num_classes else "greedy"
    return method


_RULES = {"hungarian-iou": hungarian_match, "hungarian-pixels": pixel_match, "greedy": greedy_match}


def match(conf: np.ndarray, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(mapping, matched (C, C + 1) confusion) by :func:`resolve_method`'s rule."""
    conf = _as_confusion(conf)
    mapping = _RULES[resolve_method(method, *conf.shape)](conf)
    return mapping, apply_matching(conf, mapping)


def class_predictions(maps: np.ndarray, mapping: np.ndarray, num_classes: int) -> np.ndarray:
    """Cluster-id maps -> class ids through a cluster -> class matching; unmatched clusters -> ``num_classes``."""
    table = np.where(np.asarray(mapping) < 0, num_classes, mapping)
    return table.astype(np.uint8 if num_classes < 255 else np.int64)[maps]
