"""The per-image protocol: each image's segments matched to that image's classes on their own.

For one image, every class present in its ground truth (ignore pixels left out) and every
segment id present in its prediction form an IoU matrix; the Hungarian algorithm pairs classes
with segments one to one, maximising the summed IoU; a class left without a segment scores 0.
The image's score is the mean IoU over its present classes (absent classes are skipped), and the
protocol's score the mean over images. It asks whether an image's segments follow its objects,
not whether the same segment id means the same thing in every image: it is more lenient than the
dataset-level protocols (one matching for the whole split), and a number always says which
protocol it comes from (``unseg docs evaluation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["image_ious", "PerImageScores"]


def image_ious(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(num_classes,) IoU of each class in one image after the one-to-one matching; NaN for classes
    absent from its ground truth. ``gt`` and ``pred``: integer maps of one shape."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth of shape {gt.shape} and prediction of shape {pred.shape} differ")
    keep = gt != ignore_index
    truth, seg = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
    out = np.full(num_classes, np.nan)
    classes = np.unique(truth)
    if len(classes) == 0:
        return out
    if classes[-1] >= num_classes or classes[0] < 0:
        raise ValueError(
            f"ground-truth id {classes[-1] if classes[-1] >= num_classes else classes[0]} is outside "
            f"0..{num_classes - 1} and is not ignore_index {ignore_index}"
        )
    segments = np.unique(seg)
    rows, cols = np.searchsorted(classes, truth), np.searchsorted(segments, seg)
    conf = np.bincount(rows * len(segments) + cols, minlength=len(classes) * len(segments)).reshape(
        len(classes), len(segments)
    )
    iou = conf / (conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf)
    matched_rows, matched_cols = linear_sum_assignment(iou, maximize=True)
    out[classes] = 0.0
    out[classes[matched_rows]] = iou[matched_rows, matched_cols]
    return out * 100


@dataclass
class PerImageScores:
    """Per-image IoUs of a split (images x classes, NaN where a class is absent), and their summaries."""

    num_classes: int
    ious: list[np.ndarray] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)  # segments of each image's prediction

    def add(self, gt: np.ndarray, pred: np.ndarray, ignore_index: int = 255) -> None:
        self.ious.append(image_ious(gt, pred, self.num_classes, ignore_index))
        self.segments.append(len(np.unique(pred)))

    @property
    def miou(self) -> float:
        """Mean over images of each image's mean IoU over its present classes."""
        per_image = [np.nanmean(i) for i in self.ious if not np.isnan(i).all()]
        return float(np.mean(per_image)) if per_image else float("nan")

    @property
    def class_iou(self) -> np.ndarray:
        """(num_classes,) each class's mean IoU over the images it is present in (NaN: in none)."""
        stack = np.stack(self.ious) if self.ious else np.full((0, self.num_classes), np.nan)
        present = ~np.isnan(stack)
        return np.where(present.any(0), np.nansum(stack, 0) / np.maximum(present.sum(0), 1), np.nan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "miou": self.miou,
            "class_iou": [None if np.isnan(v) else float(v) for v in self.class_iou],
            "num_images": len(self.ious),
            "segments_per_image_mean": float(np.mean(self.segments)),
        }
