"""Evaluation, the leaf every method scores with: confusion matrices and segmentation scores (``metrics``),
clustering, heads and dense retrieval on cached features (``unseg docs evaluation``). Nothing here builds a
backbone or a dataset from names: that is :mod:`unseg.protocols`."""

from __future__ import annotations

from .metrics import ConfusionAccumulator, SegmentationScores, confusion_matrix, scores_from_confusion

__all__ = ["ConfusionAccumulator", "SegmentationScores", "confusion_matrix", "scores_from_confusion"]
