"""STEGO's evaluation (SPEC §4): flip-averaged codes, upsampled to the labels, read by both probes.

The cluster probe is unsupervised: its clusters are matched one-to-one to classes by
Hungarian matching on the dataset-level confusion. The linear probe is read as it is.
Scores (x100) come from the project's one metric and matching code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import Backbone
from ...clustering import match
from ...evaluation.metrics import ConfusionAccumulator, SegmentationScores, scores_from_confusion
from ...evaluation.report import class_predictions
from ...features.cache import FeatureCache
from ...features.extract import resolve_device
from .model import ClusterProbe, LinearProbe, StegoHead

__all__ = ["stego_codes", "evaluate_stego", "StegoScores", "Refine"]

# (indices of a batch's images in the cache, (B, C, H, W) log-probabilities at mask size) -> (B, C, H, W)
# refined scores, e.g. a dense CRF that closes over the dataset's images and runs the batch in parallel
Refine = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass
class StegoScores:
    """Cluster probe (after Hungarian matching; ``mapping[k]`` = class of cluster k) and linear probe."""

    cluster: SegmentationScores
    linear: SegmentationScores
    mapping: np.ndarray
    predictions: np.ndarray | None = None  # (N, H, W) matched cluster-probe classes when kept; C = no class

    def summary(self) -> str:
        return (f"cluster probe: mIoU {self.cluster.miou:5.1f}  acc {self.cluster.pixel_accuracy:5.1f} | "
                f"linear probe: mIoU {self.linear.miou:5.1f}  acc {self.linear.pixel_accuracy:5.1f}")

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster.to_dict(), "linear": self.linear.to_dict(), "mapping": self.mapping.tolist()}


@torch.no_grad()
def stego_codes(head: StegoHead, x: torch.Tensor, flip_tta: bool = True, backbone: Backbone | None = None
                ) -> torch.Tensor:
    """Codes of feature maps ``x`` (or of images ``x`` through ``backbone``), averaged with their mirror.

    With a backbone the image is flipped, as STEGO does. Without one the cached feature
    map is flipped instead: that equals image-flip averaging only for a backbone whose
    features mirror exactly with the image, which a ViT or CNN does only approximately.
    """
    def code(v: torch.Tensor) -> torch.Tensor:
        return head(backbone(v) if backbone is not None else v)

    out = code(x)
    if flip_tta:
        out = (out + code(x.flip(-1)).flip(-1)) / 2
    return out


@torch.no_grad()
def evaluate_stego(head: nn.Module, cluster_probe: ClusterProbe, linear_probe: LinearProbe, cache: FeatureCache,
                   masks: np.ndarray, n_classes: int, refine: Refine | None = None, flip_tta: bool = True,
                   batch_size: int = 8, device: str = "auto", keep_predictions: bool = False) -> StegoScores:
    """Score both probes on cached features against ``masks`` ((N, H, W), cache order, 255 = ignore).

    Codes are bilinearly upsampled to the masks' size before the probes; ``refine`` (e.g.
    a dense CRF) post-processes each image's probe outputs before the argmax. ``keep_predictions``
    keeps the cluster probe's matched per-image predictions (for reports).
    """
    if len(masks) != len(cache):
        raise ValueError(f"{len(masks)} masks for {len(cache)} cached images")
    dev = resolve_device(device)
    head, cluster_probe, linear_probe = (m.to(dev).eval() for m in (head, cluster_probe, linear_probe))
    clusters = ConfusionAccumulator(n_classes, cluster_probe.n_clusters)
    linear = ConfusionAccumulator(n_classes)
    kept = []
    start = 0
    for block in cache.iter_chunks(batch_size):
        code = stego_codes(head, torch.from_numpy(block).to(dev), flip_tta)
        code = F.interpolate(code, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        gt = masks[start:start + len(block)]
        for acc, scores in ((clusters, cluster_probe.log_probs(code)), (linear, linear_probe(code).log_softmax(1))):
            if refine is not None:
                scores = refine(list(range(start, start + len(block))), scores)
            pred = scores.argmax(1).cpu().numpy()
            acc.update(gt, pred)
            if keep_predictions and acc is clusters:
                kept.append(pred.astype(np.int16))
        start += len(block)
    mapping, matched = match(clusters.matrix, "hungarian")
    predictions = class_predictions(np.concatenate(kept), mapping, n_classes) if kept else None
    return StegoScores(scores_from_confusion(matched), scores_from_confusion(linear.matrix), mapping, predictions)
