"""Matching, StandardPCA and k-means against hand-computed values and numpy references."""

import itertools

import numpy as np
import pytest

from unseg.clustering import (
    UNMATCHED,
    StandardPCA,
    apply_matching,
    assign,
    greedy_match,
    hungarian_match,
    kmeans,
    match,
    resolve_method,
)
from unseg.clustering.matching import CLUSTERING_MATCHING, STEGO_MATCHING, MatchingError, pixel_match
from unseg.errors import UnsegError
from unseg.evaluation.metrics import confusion_matrix, scores_from_confusion

# --- matching ---------------------------------------------------------------------------


def test_hungarian_recovers_a_permutation():
    # the 3-class example of test_metrics with clusters (2, 0, 1) holding classes (2, 0, 1)
    conf = np.array([[0, 3, 1], [2, 0, 4], [5, 1, 0]])
    mapping, matched = match(conf)
    np.testing.assert_array_equal(mapping, [2, 0, 1])
    np.testing.assert_array_equal(matched, [[3, 1, 0, 0], [0, 4, 2, 0], [1, 0, 5, 0]])
    assert scores_from_confusion(matched).miou == pytest.approx(59.880952, abs=1e-6)


def test_hungarian_fewer_clusters_than_classes():
    conf = np.array([[5, 0], [1, 4], [3, 1]])
    # rows 5 5 4, cols 9 5; IoU(c0,k0) = 5/9, IoU(c1,k1) = 4/6 beats every other pairing
    mapping = hungarian_match(conf)
    np.testing.assert_array_equal(mapping, [0, 1])
    s = scores_from_confusion(apply_matching(conf, mapping, 3))
    # IoU0 = 5/(5+9-5), IoU1 = 4/(5+5-4), IoU2 = 0 (in gt, never predicted)
    np.testing.assert_allclose(s.iou, [500 / 9, 400 / 6, 0.0])
    assert s.miou == pytest.approx((500 / 9 + 400 / 6) / 3)  # 40.74
    assert s.pixel_accuracy == pytest.approx(9 / 14 * 100)


def test_hungarian_extra_clusters_are_unmatched_and_count_as_errors():
    conf = np.array([[6, 0, 2], [1, 5, 0]])
    # IoU(c0,k0) = 6/9, IoU(c1,k1) = 5/6; cluster 2 is left over
    mapping, matched = match(conf, "hungarian-iou")
    np.testing.assert_array_equal(mapping, [0, 1, UNMATCHED])
    np.testing.assert_array_equal(matched, [[6, 0, 2], [1, 5, 0]])
    s = scores_from_confusion(matched)
    # the 2 unmatched pixels stay in class 0's denominator: 6/(8+7-6), not 6/(6+7-6)
    np.testing.assert_allclose(s.iou, [200 / 3, 500 / 6])
    assert s.miou == pytest.approx(75.0)
    assert s.pixel_accuracy == pytest.approx(11 / 14 * 100)


def test_greedy_many_to_one():
    conf = np.array([[4, 0, 1, 3, 0], [1, 3, 0, 0, 0], [0, 1, 5, 1, 0]])
    # column argmax: k0 -> 0, k1 -> 1, k2 -> 2, k3 -> 0, k4 empty -> unmatched
    assert greedy_match(conf).tolist() == [0, 1, 2, 0, UNMATCHED]
    mapping, matched = match(conf)  # auto: K = 5 > C = 3 -> greedy
    np.testing.assert_array_equal(mapping, [0, 1, 2, 0, UNMATCHED])
    np.testing.assert_array_equal(matched, [[7, 0, 1, 0], [1, 3, 0, 0], [1, 1, 5, 0]])
    # rows 8 4 7, cols 9 4 6: IoU = 7/10, 3/5, 5/8
    s = scores_from_confusion(matched)
    np.testing.assert_allclose(s.iou, [70.0, 60.0, 62.5])
    assert s.miou == pytest.approx(192.5 / 3)
    assert s.pixel_accuracy == pytest.approx(15 / 19 * 100)


def test_auto_rule_follows_leopart():
    assert resolve_method("auto", num_classes=21, num_clusters=21) == "hungarian-iou"
    assert resolve_method("auto", num_classes=21, num_clusters=10) == "hungarian-iou"
    assert resolve_method("auto", num_classes=21, num_clusters=100) == "greedy"
    assert resolve_method("hungarian-pixels", num_classes=21, num_clusters=100) == "hungarian-pixels"
    assert (CLUSTERING_MATCHING, STEGO_MATCHING) == ("auto", "hungarian-pixels")


# The two papers' Hungarian rules on a case where they disagree. Class 0 (15 px) is split 5 / 10
# over clusters X / Y; class 1 (6 px) is 1 / 5. Class 2 and cluster Z are empty (absent from
# both ground truth and prediction). Identity: IoUs 5/16, 5/16, 10 matched pixels; swapping
# X and Y: IoUs 10/20, 1/11, 11 matched pixels. Max-IoU keeps the identity, max-pixels swaps.
DISAGREE = np.array([[5, 10, 0], [1, 5, 0], [0, 0, 0]])


def _pair_ious(conf: np.ndarray, perm: tuple[int, ...]) -> list[tuple[int, int]]:
    """(tp, tp + fp + fn) per class when class c takes cluster perm[c]."""
    return [(conf[c, k], conf[c].sum() + conf[:, k].sum() - conf[c, k]) for c, k in enumerate(perm)]


def _leopart_miou(conf: np.ndarray, perm: tuple[int, ...]) -> float:
    """PredsmIoU: tp / max(tp + fp + fn, 1e-8) per class, averaged over all classes."""
    return 100 * float(np.mean([tp / max(u, 1e-8) for tp, u in _pair_ious(conf, perm)]))


def _stego_miou(conf: np.ndarray, perm: tuple[int, ...]) -> float:
    """UnsupervisedMetrics: tp / (tp + fp + fn), classes where it is 0/0 left out."""
    return 100 * float(np.mean([tp / u for tp, u in _pair_ious(conf, perm) if u > 0]))


def test_iou_and_pixel_rules_disagree_and_each_reproduces_its_papers_number():
    perms = list(itertools.permutations(range(3)))
    by_iou = max(perms, key=lambda p: sum(tp / u if u else 0.0 for tp, u in _pair_ious(DISAGREE, p)))
    by_pixels = max(perms, key=lambda p: sum(DISAGREE[c, k] for c, k in enumerate(p)))
    assert by_iou == (0, 1, 2) and by_pixels == (1, 0, 2)  # brute force: the rules disagree
    mapping_iou, matched_iou = match(DISAGREE, "hungarian-iou")
    mapping_px, matched_px = match(DISAGREE, "hungarian-pixels")
    np.testing.assert_array_equal(mapping_iou, np.argsort(by_iou))  # mapping[k] = class of cluster k
    np.testing.assert_array_equal(mapping_px, np.argsort(by_pixels))
    # Leopart: max-IoU, absent class counted as 0 over all 3 classes: (5/16 + 5/16 + 0) / 3
    leopart = scores_from_confusion(matched_iou, absent="zero")
    assert leopart.miou == pytest.approx(_leopart_miou(DISAGREE, by_iou)) == pytest.approx(62.5 / 3)
    # STEGO: max-pixels, absent class left out: (10/20 + 1/11) / 2
    stego = scores_from_confusion(matched_px, absent="skip")
    assert stego.miou == pytest.approx(_stego_miou(DISAGREE, by_pixels)) == pytest.approx(50 * (1 / 2 + 1 / 11))
    assert stego.pixel_accuracy == pytest.approx(100 * 11 / 21)
    # the other combinations, for the record: each option changes the number
    assert scores_from_confusion(matched_iou).miou == pytest.approx(31.25)
    assert scores_from_confusion(matched_px, absent="zero").miou == pytest.approx(100 * (1 / 2 + 1 / 11) / 3)


def test_pixel_rule_with_more_or_fewer_clusters_than_classes():
    conf = np.array([[6, 0, 2], [1, 5, 0]])
    assert pixel_match(conf).tolist() == [0, 1, UNMATCHED]  # 11 matched pixels beats every other pairing
    # class 0 (9 px) is mostly cluster 1; class 1 (4 px) all in cluster 1 too; cluster 0 holds class 2
    conf = np.array([[0, 9], [0, 4], [3, 0]])
    assert pixel_match(conf).tolist() == [2, 0]  # 3 + 9 matched pixels; class 1 gets no cluster


def test_matching_rejects_bad_input():
    conf = np.ones((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="class 5"):
        apply_matching(conf, np.array([0, 5, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        apply_matching(conf, np.array([0, 1, 1]), num_classes=3)
    with pytest.raises(MatchingError, match="'nearest' is not one of auto, hungarian-iou") as err:
        match(conf, "nearest")
    assert isinstance(err.value, UnsegError)


# --- StandardPCA ------------------------------------------------------------------------


def _data(seed=0, n=600, d=8):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    return (rng.normal(size=(n, d)) * np.linspace(0.5, 4, d)) @ mix + 1000.0  # correlated, far from 0


def test_standard_pca_matches_full_matrix_reference():
    x = _data()
    z = (x - x.mean(0)) / x.std(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    ref = z @ vt[:3].T

    pca = StandardPCA(3).fit([x])
    out = pca.transform(x)
    assert out.dtype == np.float32 and out.shape == (600, 3)
    signs = np.sign((out * ref).sum(0))
    np.testing.assert_allclose(out, ref * signs, rtol=1e-4, atol=1e-4)
    comps = pca.components_
    assert (comps[np.arange(3), np.abs(comps).argmax(1)] > 0).all()  # fixed sign convention
    np.testing.assert_allclose(pca.explained_variance_, (ref**2).mean(0), rtol=1e-8)


def test_standard_pca_streaming_equals_one_chunk():
    x = _data(1)
    whole = StandardPCA(4).fit([x])
    streamed = StandardPCA(4).fit(iter([x[:100], x[100:101], x[101:]]))
    np.testing.assert_allclose(streamed.mean_, whole.mean_)
    np.testing.assert_allclose(streamed.scale_, whole.scale_)
    np.testing.assert_allclose(streamed.components_, whole.components_, atol=1e-10)
    np.testing.assert_allclose(streamed.transform(x), whole.transform(x), atol=1e-5)


def test_standard_pca_without_reduction_only_standardises():
    x = _data(2, d=4)
    x[:, 2] = 7.0  # constant feature: centred, not divided by zero
    out = StandardPCA(50).fit([x[:300], x[300:]]).transform(x)
    ref = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert (out[:, 2] == 0).all()


# --- k-means ----------------------------------------------------------------------------


def _blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat(np.arange(3), 100)
    return (centres[truth] + rng.normal(scale=0.5, size=(300, 2))).astype(np.float32), truth


def test_kmeans_recovers_blobs_and_is_deterministic():
    x, truth = _blobs()
    res = kmeans(x, 3, seed=0, niter=20, nredo=2)
    assert res.centroids.shape == (3, 2) and res.labels.dtype == np.int64
    _, matched = match(confusion_matrix(truth, res.labels, 3))
    assert scores_from_confusion(matched).miou == pytest.approx(100.0)
    np.testing.assert_array_equal(kmeans(x, 3, seed=0, niter=20, nredo=2).labels, res.labels)
    np.testing.assert_array_equal(assign(x, res.centroids), res.labels)
    expected_inertia = ((x - res.centroids[res.labels]) ** 2).sum()
    assert res.inertia == pytest.approx(expected_inertia, rel=1e-4)


def test_spherical_kmeans_uses_unit_centroids():
    x, truth = _blobs()
    x = x + np.float32(20.0)  # directions differ per blob
    res = kmeans(x, 3, seed=1, niter=20, nredo=2, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, rtol=1e-5)
    _, matched = match(confusion_matrix(truth, res.labels, 3))
    assert scores_from_confusion(matched).miou == pytest.approx(100.0)
    np.testing.assert_array_equal(assign(x, res.centroids, spherical=True), res.labels)


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="k=5 clusters out of 4 points"):
        kmeans(np.zeros((4, 2), np.float32), 5, seed=0)
