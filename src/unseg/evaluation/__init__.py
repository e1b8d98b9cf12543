"""Evaluation: confusion matrices and segmentation scores (SPEC §3)."""
from __future__ import annotations

from .metrics import ConfusionAccumulator, SegmentationScores, confusion_matrix, scores_from_confusion

__all__ = ["ConfusionAccumulator", "SegmentationScores", "confusion_matrix", "scores_from_confusion"]
