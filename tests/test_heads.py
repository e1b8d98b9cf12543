"""Linear / FCN probes: they learn a labelling that is a function of the features, their
augmentation keeps images and masks aligned, and evaluation scores what they predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unseg.datasets import create_dataset
from unseg.evaluation.heads import FCNHead, LinearHead, _AugmentedPairs, evaluate_head, head_settings, train_head


class ArrayCache:
    """The part of FeatureCache the heads read, over in-memory arrays."""

    def __init__(self, feats: np.ndarray) -> None:
        self.feats = feats.astype(np.float32)

    def __len__(self) -> int:
        return len(self.feats)

    def features(self, i: int) -> np.ndarray:
        return self.feats[i]

    def iter_chunks(self, batch: int = 64):
        for s in range(0, len(self.feats), batch):
            yield self.feats[s : s + batch]


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 8, 4, 4) whose first 3 channels one-hot encode the class of each cell;
    masks (n, 8, 8) = the class map nearest-upsampled x2 (so bilinear logits recover it)."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 3, (n, 4, 4))
    feats = rng.normal(0, 0.1, (n, 8, 4, 4))
    for c in range(3):
        feats[:, c] += 3.0 * (classes == c)
    masks = classes.repeat(2, 1).repeat(2, 2).astype(np.uint8)
    masks[:, 0, 0] = 255  # ignored pixels must not matter
    return feats, masks


@pytest.mark.parametrize("head", ["linear", "fcn"])
def test_head_learns_a_separable_labelling(head):
    feats, masks = separable(24, seed=0)
    train = ArrayCache(feats)
    model = train_head(
        backbone=_Dim8(),
        train=None,
        num_classes=3,
        head=head,
        augment=False,
        train_cache=train,
        train_masks=masks,
        epochs=15,
        lr=0.05,
        milestones=[12],
        batch_size=8,
        device="cpu",
    )
    assert isinstance(model, LinearHead if head == "linear" else FCNHead)
    val_feats, val_masks = separable(8, seed=1)
    scores, preds = evaluate_head(model, ArrayCache(val_feats), val_masks, 3, device="cpu")
    assert preds.shape == val_masks.shape
    assert scores.miou > 90 and scores.pixel_accuracy > 95
    # an untrained head scores far lower: the number measures the training
    torch.manual_seed(0)
    untrained, _ = evaluate_head(
        (LinearHead if head == "linear" else FCNHead)(8, 3), ArrayCache(val_feats), val_masks, 3, device="cpu"
    )
    assert untrained.miou < scores.miou - 30


class _Dim8(torch.nn.Module):
    """Stand-in backbone for cached-feature training: only its dim and normalisation are read."""

    embed_dim, mean, std = 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def test_protocol_defaults_and_overrides():
    assert head_settings("linear") == {"epochs": 25, "lr": 0.01, "milestones": [20], "batch_size": 60}
    assert head_settings("fcn", lr=0.1) == {"epochs": 30, "lr": 0.1, "milestones": [15], "batch_size": 64}
    with pytest.raises(ValueError, match="head 'mlp'"):
        head_settings("mlp")


def test_augmentation_keeps_image_and_mask_aligned(tmp_path):
    """Colour encodes the class: after RandomResizedCrop + flip each mask pixel must still sit on its colour."""
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, (12, 16)).repeat(4, 0).repeat(4, 1).astype(np.uint8)  # 48x64 blocks
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(colours[classes]).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(classes).save(tmp_path / "masks" / "a.png")
    dataset = create_dataset("folder", tmp_path / "imgs", "", masks=tmp_path / "masks", num_classes=3)
    pairs = _AugmentedPairs(dataset, (48, 64), (48, 64), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    torch.manual_seed(0)
    for _ in range(5):
        image, mask = pairs[0]
        assert image.shape == (3, 48, 64) and mask.shape == (48, 64)
        colour_class = image.argmax(0)
        pure = image.max(0).values > 0.9  # pixels away from interpolated block edges
        agree = (colour_class[pure] == mask[pure]).float().mean()
        assert agree > 0.97
