"""Metrics against hand-computed values (the arithmetic is in the comments)."""

import json
import math

import numpy as np
import pytest

from unseg.errors import UnsegError
from unseg.evaluation.metrics import ConfusionAccumulator, confusion_matrix, scores_from_confusion


def test_confusion_skips_ignored_pixels():
    gt = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 9]])  # the 9 sits on an ignored pixel: never looked at
    expected = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    conf = confusion_matrix(gt, pred, num_classes=3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)


def test_confusion_with_more_predicted_ids_than_classes():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 3, 3, 2])
    np.testing.assert_array_equal(confusion_matrix(gt, pred, 2, num_preds=4), [[1, 0, 0, 1], [0, 0, 1, 1]])


@pytest.mark.parametrize(
    "gt, pred, message",
    [
        ([0, 1], [0, 3], "predicted id 3"),
        ([0, 1], [-1, 0], "predicted id -1"),
        ([0, 7], [0, 1], "ground-truth id 7"),
    ],
)
def test_confusion_names_out_of_range_ids(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(gt), np.array(pred), num_classes=3)


def test_confusion_rejects_shape_mismatch_and_floats():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.zeros(3), np.zeros(3), 3)


def test_three_class_scores():
    conf = np.array([[3, 1, 0], [0, 4, 2], [1, 0, 5]])
    # rows 4 6 6, cols 4 5 7, diag 3 4 5, total 16
    # IoU = 3/(4+4-3) = 3/5, 4/(6+5-4) = 4/7, 5/(6+7-5) = 5/8
    s = scores_from_confusion(conf)
    np.testing.assert_allclose(s.iou, [60.0, 400 / 7, 62.5])
    assert s.miou == pytest.approx((60.0 + 400 / 7 + 62.5) / 3)  # 59.880952...
    assert s.miou == pytest.approx(59.880952, abs=1e-6)
    assert s.pixel_accuracy == pytest.approx(75.0)  # 12 / 16
    assert s.mean_accuracy == pytest.approx((3 / 4 + 4 / 6 + 5 / 6) / 3 * 100)


def test_class_never_predicted_counts_as_zero():
    conf = np.array([[2, 0, 0], [1, 0, 1], [0, 0, 3]])
    # IoU0 = 2/(2+3-2) = 2/3, IoU1 = 0/(2+0-0) = 0, IoU2 = 3/(3+4-3) = 3/4
    s = scores_from_confusion(conf)
    np.testing.assert_allclose(s.iou, [200 / 3, 0.0, 75.0])
    assert s.miou == pytest.approx((200 / 3 + 0 + 75) / 3)  # 47.22...
    assert s.pixel_accuracy == pytest.approx(5 / 7 * 100)


def test_class_absent_everywhere_is_nan_and_excluded():
    conf = np.array([[2, 1, 0, 0], [0, 3, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]])
    # IoU0 = 2/(3+3-2) = 1/2, IoU1 = 3/(3+4-3) = 3/4, IoU2 undefined, IoU3 = 1/(2+1-1) = 1/2
    s = scores_from_confusion(conf)
    assert math.isnan(s.iou[2])
    np.testing.assert_allclose(s.iou[[0, 1, 3]], [50.0, 75.0, 50.0])
    assert s.miou == pytest.approx(175 / 3)
    d = s.to_dict()
    assert d["iou"][2] is None
    assert json.loads(json.dumps(d))["miou"] == pytest.approx(175 / 3)


def test_absent_class_as_zero_averages_over_all_classes():
    # Leopart's PredsmIoU: the same confusion as above, the absent class 2 counted as IoU 0
    conf = np.array([[2, 1, 0, 0], [0, 3, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]])
    s = scores_from_confusion(conf, absent="zero")
    np.testing.assert_allclose(s.iou, [50.0, 75.0, 0.0, 50.0])
    assert s.miou == pytest.approx(175 / 4)
    assert s.pixel_accuracy == scores_from_confusion(conf).pixel_accuracy
    assert s.mean_accuracy == scores_from_confusion(conf).mean_accuracy  # recall leaves empty classes out
    with pytest.raises(UnsegError, match="absent-class rule 'none' is not one of skip, zero"):
        scores_from_confusion(conf, absent="none")


def test_unmatched_column_counts_as_errors():
    # column 2 = pixels predicted as no class: in the row totals, in no class's predictions
    conf = np.array([[6, 0, 2], [1, 5, 0]])
    # IoU0 = 6/(8+7-6) = 2/3, IoU1 = 5/(6+5-5) = 5/6, accuracy 11/14
    s = scores_from_confusion(conf)
    np.testing.assert_allclose(s.iou, [200 / 3, 500 / 6])
    assert s.miou == pytest.approx(75.0)
    assert s.pixel_accuracy == pytest.approx(11 / 14 * 100)
    with pytest.raises(ValueError, match="shape"):
        scores_from_confusion(np.zeros((2, 4)))


def test_accumulator_equals_one_shot():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(5, 16, 16))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 6, size=gt.shape)
    acc = ConfusionAccumulator(4, num_preds=6)
    for g, p in zip(gt, pred, strict=True):
        acc.update(g, p)
    one_shot = confusion_matrix(gt, pred, 4, num_preds=6)
    np.testing.assert_array_equal(acc.matrix, one_shot)
    assert acc.matrix.sum() == (gt != 255).sum()
