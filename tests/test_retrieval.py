"""Dense NN retrieval (Hummingbird protocol) against a brute-force numpy kNN label transfer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unseg.evaluation.metrics import confusion_matrix, scores_from_confusion
from unseg.evaluation.retrieval import MemoryBank, dense_retrieval, patch_labels


def brute_force(train_feats, train_masks, val_feats, val_size, num_classes, k, temperature):
    """Label distributions by loops, cosine kNN by a full similarity matrix and argsort."""
    n, d, h, w = train_feats.shape
    ph, pw = train_masks.shape[1] // h, train_masks.shape[2] // w
    bank, labels = [], []
    for i in range(n):
        for r in range(h):
            for c in range(w):
                cell = train_masks[i, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw].ravel()
                cell = cell[cell != 255]
                if cell.size:
                    bank.append(train_feats[i, :, r, c])
                    labels.append(np.bincount(cell, minlength=num_classes) / cell.size)
    bank = np.array(bank) / np.linalg.norm(bank, axis=1, keepdims=True)
    labels = np.array(labels)
    q = val_feats.transpose(0, 2, 3, 1).reshape(-1, d)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = q @ bank.T
    top = np.argsort(-sims, axis=1)[:, :k]
    s = np.take_along_axis(sims, top, axis=1) / temperature
    weights = np.exp(s - s.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    label_hat = (weights[:, :, None] * labels[top]).sum(axis=1)
    label_hat = label_hat.reshape(len(val_feats), h, w, num_classes).transpose(0, 3, 1, 2)
    up = F.interpolate(torch.from_numpy(label_hat), size=val_size, mode="bilinear", align_corners=False)
    return up.argmax(1).numpy()


@pytest.mark.parametrize("temperature", [0.02, 0.5])
def test_retrieval_equals_brute_force_knn(tmp_path, temperature, feature_cache):
    rng = np.random.default_rng(0)
    c, h, w = 4, 3, 4
    train_feats = rng.normal(size=(5, 16, h, w))
    val_feats = rng.normal(size=(3, 16, h, w))
    train_masks = rng.integers(0, c, size=(5, 2 * h, 2 * w)).astype(np.uint8)
    train_masks[0, :2, :2] = 255  # a patch with no labelled pixel: left out of the bank
    train_masks[1, 0, 0] = 255
    val_masks = rng.integers(0, c, size=(3, 10, 13)).astype(np.uint8)
    val_masks[:, 0] = 255
    train = feature_cache(tmp_path / "train", train_feats)
    val = feature_cache(tmp_path / "val", val_feats)
    result = dense_retrieval(
        train, train_masks, val, val_masks, c, k=7, temperature=temperature, batch=2, keep_predictions=True
    )
    expected = brute_force(train_feats, train_masks, val_feats, (10, 13), c, 7, temperature)
    np.testing.assert_array_equal(result.predictions, expected)
    scores = scores_from_confusion(confusion_matrix(val_masks, expected, c))
    assert result.miou == pytest.approx(scores.miou) and result.settings["memory"] == 5 * h * w - 1


def test_patch_labels_distribution_and_majority():
    masks = np.array([[[0, 0, 1, 255], [0, 2, 255, 255]]], dtype=np.uint8)  # 1x2 grid of 2x2 patches
    np.testing.assert_allclose(patch_labels(masks, (1, 2), 3), [[0.75, 0, 0.25], [0, 1, 0]])
    np.testing.assert_allclose(patch_labels(masks, (1, 2), 3, "majority"), [[1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="multiple"):
        patch_labels(masks, (1, 3), 3)


def test_memory_size_draws_a_seeded_subset(tmp_path, feature_cache):
    rng = np.random.default_rng(1)
    cache = feature_cache(tmp_path / "c", rng.normal(size=(2, 4, 2, 2)))
    masks = rng.integers(0, 2, size=(2, 4, 4)).astype(np.uint8)
    a = MemoryBank.from_cache(cache, masks, 2, memory_size=5, seed=3)
    b = MemoryBank.from_cache(cache, masks, 2, memory_size=5, seed=3)
    assert len(a) == 5 and np.array_equal(a.features, b.features)
    assert len(MemoryBank.from_cache(cache, masks, 2)) == 8
