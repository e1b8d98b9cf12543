"""Dense nearest-neighbour retrieval (the Hummingbird protocol, Balažević et al., NeurIPS 2023), on cached features.

How well do patch features carry semantics without any training? Every train patch's
feature goes into a memory bank with the patch's label distribution (the share of each
class among its labelled pixels). Each val patch looks up its k nearest bank entries by
cosine similarity and takes their labels weighted by softmax(similarity / temperature);
the per-patch class distributions are bilinearly upsampled to the masks and argmaxed.

Facts carried over from the open reproduction (vpariza/open-hummingbird-eval): L2-normalised
features, k = 30 neighbours, temperature 0.02, label distributions (``mode="majority"``
stores the one-hot majority label instead), bilinear upsampling. Ours: the bank holds
the cached (un-augmented) features of every train patch, or a seeded random subset of
``memory_size``; ignored pixels are left out of a patch's distribution (patches with no
labelled pixel are left out of the bank; the reproduction counts VOC's 255 as
background); predictions are class ids scored directly (the reproduction's Hungarian
matching of classes to themselves is the identity up to ties).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax

from ..clustering.kmeans import unit_rows
from ..datasets.base import IGNORE_INDEX
from ..features.cache import FeatureCache
from .metrics import ConfusionAccumulator, scores_from_confusion

__all__ = ["NEIGHBOURS", "TEMPERATURE", "patch_labels", "MemoryBank", "RetrievalResult", "dense_retrieval"]

NEIGHBOURS = 30
TEMPERATURE = 0.02
MODES = ("distribution", "majority")


def patch_labels(masks: np.ndarray, grid: tuple[int, int], num_classes: int, mode: str = "distribution") -> np.ndarray:
    """(N*h*w, C) float32 label of every patch of (N, H, W) masks on an (h, w) grid (H, W multiples of it):
    its class distribution over labelled pixels, or the one-hot majority class; zeros when none is labelled."""
    if mode not in MODES:
        raise ValueError(f"label mode {mode!r} is not one of {', '.join(MODES)}")
    masks = np.asarray(masks)
    n, height, width = masks.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"masks of {height}x{width} are not a multiple of the {h}x{w} token grid")
    out = np.zeros((n * h * w, num_classes), np.float32)
    for start in range(0, n, 32):  # bounded memory: int64 ids of 32 masks at a time
        block = masks[start : start + 32]
        cells = block.reshape(len(block), h, height // h, w, width // w).transpose(0, 1, 3, 2, 4)
        cells = cells.reshape(len(block) * h * w, -1).astype(np.int64)
        labelled = (cells != IGNORE_INDEX) & (cells < num_classes)
        ids = np.arange(len(cells))[:, None] * num_classes + cells
        counts = np.bincount(ids[labelled], minlength=len(cells) * num_classes).reshape(len(cells), num_classes)
        out[start * h * w : (start + len(block)) * h * w] = counts
    total = out.sum(axis=1, keepdims=True)
    if mode == "majority":
        return np.where(total > 0, np.eye(num_classes, dtype=np.float32)[out.argmax(axis=1)], 0).astype(np.float32)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0)


class MemoryBank:
    """L2-normalised patch features with their labels, searched by inner product (cosine) with faiss."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} features but {len(labels)} labels")
        self.features, self.labels = unit_rows(features), np.asarray(labels, dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.features.shape[1])
        self.index.add(self.features)

    @classmethod
    def from_cache(
        cls,
        cache: FeatureCache,
        masks: np.ndarray,
        num_classes: int,
        mode: str = "distribution",
        memory_size: int | None = None,
        seed: int = 0,
    ) -> MemoryBank:
        """Every labelled patch of the cached images (or ``memory_size`` of them, drawn with ``seed``)."""
        labels = patch_labels(masks, cache.grid, num_classes, mode)
        keep = np.flatnonzero(labels.sum(axis=1) > 0)
        if memory_size is not None and memory_size < len(keep):
            keep = np.sort(np.random.default_rng(seed).choice(keep, memory_size, replace=False))
        parts, offset = [], 0
        for tokens in cache.iter_tokens():
            rows = keep[(keep >= offset) & (keep < offset + len(tokens))] - offset
            parts.append(tokens[rows])
            offset += len(tokens)
        return cls(np.concatenate(parts), labels[keep])

    def __len__(self) -> int:
        return len(self.features)

    def transfer(self, queries: np.ndarray, k: int = NEIGHBOURS, temperature: float = TEMPERATURE) -> np.ndarray:
        """(n, C) label distribution of each query: its k nearest entries' labels, softmax(cos / T)-weighted."""
        sims, idx = self.index.search(unit_rows(queries), k)
        weights = softmax(sims / temperature, axis=1)
        return np.einsum("nk,nkc->nc", weights, self.labels[idx])


@dataclass
class RetrievalResult:
    miou: float
    pixel_accuracy: float
    iou: list[float]
    settings: dict[str, Any] = field(default_factory=dict)
    predictions: np.ndarray | None = field(default=None, repr=False)  # (N, H, W) uint8 when kept
    confusion: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> str:
        s = self.settings
        return (
            f"dense NN retrieval (k={s.get('k')}, T={s.get('temperature')}, {s.get('memory')} memory patches): "
            f"mIoU {self.miou:5.1f}  acc {self.pixel_accuracy:5.1f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("predictions", "confusion")}


def dense_retrieval(
    train_cache: FeatureCache,
    train_masks: np.ndarray,
    val_cache: FeatureCache,
    val_masks: np.ndarray,
    num_classes: int,
    k: int = NEIGHBOURS,
    temperature: float = TEMPERATURE,
    mode: str = "distribution",
    memory_size: int | None = None,
    seed: int = 0,
    batch: int = 16,
    keep_predictions: bool = False,
) -> RetrievalResult:
    """Label transfer from the train bank to every val patch; scored against ``val_masks`` (N, H, W).

    ``train_masks`` must be a multiple of the token grid (e.g. the input size) so each patch's
    pixels are known."""
    bank = MemoryBank.from_cache(train_cache, train_masks, num_classes, mode, memory_size, seed)
    h, w = val_cache.grid
    size = val_masks.shape[-2:]
    acc = ConfusionAccumulator(num_classes)
    predictions = []
    start = 0
    for tokens in val_cache.iter_tokens(batch):
        label_hat = bank.transfer(tokens, k, temperature).reshape(-1, h, w, num_classes).transpose(0, 3, 1, 2)
        up = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(label_hat)), size=size, mode="bilinear", align_corners=False
        )
        pred = up.argmax(1).numpy().astype(np.uint8 if num_classes < 256 else np.int64)
        acc.update(val_masks[start : start + len(pred)], pred)
        if keep_predictions:
            predictions.append(pred)
        start += len(pred)
    scores = scores_from_confusion(acc.matrix)
    settings = {
        "protocol": "Hummingbird dense NN retrieval",
        "k": k,
        "temperature": temperature,
        "labels": mode,
        "memory": len(bank),
        "memory_size": memory_size,
        "similarity": "cosine (faiss IndexFlatIP)",
        "upsampling": "bilinear label distributions",
        "grid": [h, w],
        "mask_size": list(size),
        "train_label_size": list(train_masks.shape[-2:]),
        "num_train": len(train_cache),
        "num_val": len(val_cache),
        "seed": seed,
    }
    return RetrievalResult(
        scores.miou,
        scores.pixel_accuracy,
        [float(v) for v in scores.iou],
        settings,
        np.concatenate(predictions) if keep_predictions else None,
        acc.matrix,
    )
