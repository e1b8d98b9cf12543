"""Confusion matrices and the scores read from them: the project's only metric code (``unseg docs evaluation``).

Conventions:

- a confusion has rows = ground-truth class, columns = predicted id; pixels whose
  ground truth is ``ignore_index`` are not counted;
- scores are percentages; the IoU of a class absent from both ground truth and prediction
  is NaN and left out of the mIoU (``absent="skip"``, STEGO's rule), or 0 and averaged
  over all classes (``absent="zero"``, Leopart's); a class present in the ground truth but
  never predicted has IoU 0 and counts either way;
- a matched confusion (see :func:`unseg.clustering.matching.apply_matching`) may carry one
  extra column of pixels predicted as no class: they count against the recall of their
  ground-truth class and against pixel accuracy, and as no class's false positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UnsegError

__all__ = [
    "confusion_matrix",
    "SegmentationScores",
    "scores_from_confusion",
    "ConfusionAccumulator",
    "ABSENT_RULES",
    "DEFAULT_ABSENT",
    "MetricError",
    "check_absent",
]

ABSENT_RULES = ("skip", "zero")
"""The IoU of a class in neither ground truth nor prediction: left out of the mIoU ("skip"), or 0 ("zero")."""
DEFAULT_ABSENT = "skip"
"""Every protocol's default: STEGO's rule; "zero" gives Leopart's PredsmIoU average (``unseg docs evaluation``)."""


class MetricError(UnsegError, ValueError):
    """An unknown scoring option."""


def check_absent(absent: str) -> str:
    """``absent`` if it names a rule of :data:`ABSENT_RULES` (checked before a long evaluation starts)."""
    if absent not in ABSENT_RULES:
        raise MetricError(f"absent-class rule {absent!r} is not one of {', '.join(ABSENT_RULES)}")
    return absent


def _check_ids(ids: np.ndarray, upper: int, what: str, extra: str = "") -> None:
    """Name the first out-of-range id: a silent bincount overflow would corrupt other cells."""
    if ids.size == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= upper:
        bad = low if low < 0 else high
        raise ValueError(f"{what} id {bad} is outside 0..{upper - 1}{extra}")


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, num_preds: int | None = None, ignore_index: int = 255
) -> np.ndarray:
    """int64 (num_classes, num_preds) counts of (ground truth, prediction) pairs over all pixels.

    ``gt`` and ``pred`` are integer arrays of one shape (any shape; they are flattened);
    ``num_preds`` defaults to ``num_classes`` (set it to K to score K clusters before matching).
    The prediction at an ignored pixel is not looked at, so it may hold any value.
    """
    num_preds = num_classes if num_preds is None else num_preds
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth of shape {gt.shape} and prediction of shape {pred.shape} differ")
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise ValueError(f"{name} must hold integer ids, not {arr.dtype}")
    gt, pred = gt.reshape(-1), pred.reshape(-1)
    keep = gt != ignore_index
    if not keep.all():
        gt, pred = gt[keep], pred[keep]
    _check_ids(gt, num_classes, "ground-truth", f" (num_classes={num_classes}) and is not ignore_index {ignore_index}")
    _check_ids(pred, num_preds, "predicted", f" (num_preds={num_preds})")
    flat = gt.astype(np.int64) * num_preds + pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_preds).reshape(num_classes, num_preds)


@dataclass
class SegmentationScores:
    """Percentages; ``iou`` per class, NaN (or 0 under ``absent="zero"``) where a class is in neither
    ground truth nor prediction."""

    miou: float
    pixel_accuracy: float
    mean_accuracy: float
    iou: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN (undefined) becomes None, since JSON has no NaN."""

        def num(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "miou": num(self.miou),
            "pixel_accuracy": num(self.pixel_accuracy),
            "mean_accuracy": num(self.mean_accuracy),
            "iou": [num(v) for v in self.iou],
        }


def _nanmean(values: np.ndarray) -> float:
    """Mean of the defined entries; NaN (without numpy's warning) when none is defined."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def scores_from_confusion(conf: np.ndarray, absent: str = DEFAULT_ABSENT) -> SegmentationScores:
    """mIoU, pixel accuracy and mean class accuracy of a (C, C) or matched (C, C + 1) confusion.

    Column C of a (C, C + 1) confusion holds pixels predicted as no class (unmatched clusters).
    ``absent``: how a class in neither ground truth nor prediction enters the mIoU, one of
    :data:`ABSENT_RULES` (the mean class accuracy always leaves classes without pixels out).
    """
    check_absent(absent)
    conf = np.asarray(conf)
    c = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] not in (c, c + 1):
        raise ValueError(f"confusion of shape {conf.shape} is neither (C, C) nor (C, C + 1)")
    conf = conf.astype(np.float64)
    tp = np.diag(conf[:, :c])
    gt_total = conf.sum(axis=1)
    pred_total = conf[:, :c].sum(axis=0)
    union = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, 0.0 if absent == "zero" else np.nan) * 100
        recall = np.where(gt_total > 0, tp / gt_total, np.nan) * 100
    total = conf.sum()
    pixel_accuracy = float(tp.sum() / total * 100) if total > 0 else math.nan
    return SegmentationScores(
        miou=_nanmean(iou), pixel_accuracy=pixel_accuracy, mean_accuracy=_nanmean(recall), iou=iou
    )


class ConfusionAccumulator:
    """Sums confusions batch by batch, so an evaluator never holds all predictions in memory."""

    def __init__(self, num_classes: int, num_preds: int | None = None, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.num_preds = num_classes if num_preds is None else num_preds
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_preds), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one batch (any shape, as :func:`confusion_matrix`)."""
        self.matrix += confusion_matrix(gt, pred, self.num_classes, self.num_preds, self.ignore_index)


class ScoresOverRuns:
    """Mean and spread of the per-seed (or per-run) ``miou`` and ``pixel_accuracy`` lists of a result."""

    miou: list[float]
    pixel_accuracy: list[float]

    @property
    def miou_mean(self) -> float:
        return float(np.mean(self.miou))

    @property
    def miou_std(self) -> float:
        return float(np.std(self.miou))

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.pixel_accuracy))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.pixel_accuracy))
