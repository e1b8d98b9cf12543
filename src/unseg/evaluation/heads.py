"""Supervised probes on a frozen backbone (``unseg docs evaluation``): a linear head and an FCN head.

Training follows the protocol on images (RandomResizedCrop(scale 0.8-1) + flip, frozen
backbone, CE on label maps at ``mask_size``); ``augment=False`` trains on the cached
train features instead (no augmentation, much faster). Evaluation always reads the
cached val features, so the backbone runs once per split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..backbones import Backbone
from ..datasets.base import IGNORE_INDEX, SegmentationDataset
from ..defaults import BATCH_SIZE, MASK_SIZE, NUM_WORKERS
from ..errors import SettingError
from ..features.cache import FeatureCache
from ..features.extract import resolve_device
from ..features.transforms import DEFAULT_INPUT_SIZE, as_size, resize_mask
from ..kinds import COUNT, POSITIVE
from .metrics import ConfusionAccumulator, scores_from_confusion


class LinearHead(nn.Module):
    """Conv1x1(D, C). Applied before the bilinear upsampling, which is equivalent (both are linear)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class FCNHead(nn.Module):
    """Two 3x3 conv(512)+ReLU, concat with the input, 3x3 conv 512 + ReLU, Dropout2d 0.1, 1x1 classifier."""

    def __init__(self, dim: int, num_classes: int, channels: int = 512) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(dim, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(nn.Conv2d(dim + channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.fuse(torch.cat([x, self.convs(x)], dim=1))))


HEADS = {"linear": LinearHead, "fcn": FCNHead}
# `unseg docs evaluation` protocol defaults per head: epochs, lr, lr-step epochs, batch size
HEAD_DEFAULTS = {
    "linear": {"epochs": 25, "lr": 0.01, "milestones": [20], "batch_size": 60},
    "fcn": {"epochs": 30, "lr": 0.01, "milestones": [15], "batch_size": 64},
}


def head_settings(head: str, **overrides: Any) -> dict[str, Any]:
    """The protocol's hyper-parameters of ``head`` with the given non-None overrides, checked (a SettingError
    for a learning rate <= 0, or epochs or a batch size below 1)."""
    if head not in HEADS:
        raise SettingError(f"head {head!r} is not one of {', '.join(HEADS)}")
    settings = {**HEAD_DEFAULTS[head], **{k: v for k, v in overrides.items() if v is not None}}
    POSITIVE.check(settings["lr"], "lr")
    for name in ("epochs", "batch_size"):
        COUNT.check(settings[name], name)
    return settings


@dataclass
class HeadResult:
    head: str
    miou: float
    pixel_accuracy: float
    iou: list[float]
    settings: dict[str, Any] = field(default_factory=dict)
    predictions: np.ndarray | None = field(default=None, repr=False)  # (N, H, W) uint8 val predictions, cache order

    def summary(self) -> str:
        return f"{self.head} head: mIoU {self.miou:5.1f}  acc {self.pixel_accuracy:5.1f}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "predictions"}


class _AugmentedPairs(Dataset):
    """Images and masks under the same RandomResizedCrop + flip; masks at ``mask_size``."""

    def __init__(
        self,
        dataset: SegmentationDataset,
        size: tuple[int, int],
        mask_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.dataset, self.mask_size = dataset, mask_size
        self.joint = v2.Compose(
            [v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        )
        self.to_input = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.dataset[i]
        image = tv_tensors.Image(torch.from_numpy(np.array(item["image"])).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(item["mask"]))
        image, mask = self.joint(image, mask)
        mask = resize_mask(mask.numpy().astype(np.uint8), self.mask_size)
        return self.to_input(image), torch.from_numpy(mask).long()


def _logits(head: nn.Module, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(head(feats), size=size, mode="bilinear", align_corners=False)


def train_head(
    backbone: Backbone,
    train: SegmentationDataset | None,
    num_classes: int,
    head: str = "linear",
    input_size: int | Sequence[int] = DEFAULT_INPUT_SIZE,
    mask_size: int | Sequence[int] = MASK_SIZE,
    epochs: int | None = None,
    lr: float | None = None,
    milestones: Sequence[int] | None = None,
    batch_size: int | None = None,
    augment: bool = True,
    train_cache: FeatureCache | None = None,
    train_masks: np.ndarray | None = None,
    device: str = "auto",
    seed: int = 0,
    num_workers: int = NUM_WORKERS,
) -> nn.Module:
    """Fit a linear / FCN head with SGD (momentum 0.9, wd 1e-4, step lr x0.1 at ``milestones``)."""
    hp = head_settings(head, epochs=epochs, lr=lr, milestones=milestones, batch_size=batch_size)
    epochs, lr, milestones, batch_size = hp["epochs"], hp["lr"], hp["milestones"], hp["batch_size"]
    size, msize = as_size(input_size), as_size(mask_size)
    torch.manual_seed(seed)
    dev = resolve_device(device)
    backbone = backbone.to(dev).eval()
    model = HEADS[head](backbone.embed_dim, num_classes).to(dev)
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=list(milestones), gamma=0.1)
    generator = torch.Generator().manual_seed(seed)
    if augment:
        if train is None:
            raise ValueError("augment=True trains on the images: pass train (the dataset)")
        loader = DataLoader(
            _AugmentedPairs(train, size, msize, backbone.mean, backbone.std),
            batch_size=batch_size,
            shuffle=True,
            num_workers=num_workers,
            generator=generator,
            drop_last=False,
            persistent_workers=num_workers > 0,
        )
    else:
        if train_cache is None or train_masks is None:
            raise ValueError("augment=False trains on cached features: pass train_cache and train_masks")
        loader = DataLoader(
            _CachedPairs(train_cache, train_masks), batch_size=batch_size, shuffle=True, generator=generator
        )
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            if augment:
                with torch.no_grad():
                    x = backbone(x)
            loss = F.cross_entropy(_logits(model, x, y.shape[-2:]), y, ignore_index=IGNORE_INDEX)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        schedule.step()
    return model.eval()


class _CachedPairs(Dataset):
    def __init__(self, cache: FeatureCache, masks: np.ndarray) -> None:
        self.cache, self.masks = cache, masks

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.cache.features(i)), torch.from_numpy(self.masks[i]).long()


@torch.no_grad()
def evaluate_head(
    model: nn.Module,
    cache: FeatureCache,
    masks: np.ndarray,
    num_classes: int,
    device: str = "auto",
    batch_size: int = BATCH_SIZE,
) -> tuple[Any, np.ndarray]:
    """Scores of a trained head on cached features; logits bilinearly upsampled to the masks' size.

    Returns (SegmentationScores, predictions (N, H, W) uint8)."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    acc = ConfusionAccumulator(num_classes, num_classes)
    preds = []
    start = 0
    for block in cache.iter_chunks(batch_size):
        logits = _logits(model, torch.from_numpy(block).to(dev), masks.shape[-2:])
        pred = logits.argmax(1).cpu().numpy().astype(np.uint8)
        acc.update(masks[start : start + len(pred)], pred)
        preds.append(pred)
        start += len(pred)
    return scores_from_confusion(acc.matrix), np.concatenate(preds)
