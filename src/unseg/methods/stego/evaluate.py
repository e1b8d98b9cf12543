"""STEGO's evaluation: flip-averaged codes, upsampled to the labels, read by both probes.

The cluster probe is unsupervised: its clusters are matched one-to-one to classes on the
dataset-level confusion, by default with STEGO's rule (the assignment that maximises
matched pixels; ``unseg docs evaluation``). The linear probe is read as it is. Scores (x100)
come from the project's one metric and matching code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import Backbone
from ...clustering import match, resolve_method
from ...clustering.matching import STEGO_MATCHING, class_predictions
from ...errors import SettingError, WeightsError
from ...evaluation.metrics import (
    DEFAULT_ABSENT,
    ConfusionAccumulator,
    SegmentationScores,
    check_absent,
    scores_from_confusion,
)
from ...features.cache import FeatureCache
from ...features.extract import resolve_device
from ...features.upsample import Upsampling
from .model import ClusterProbe, LinearProbe

__all__ = ["stego_codes", "evaluate_stego", "StegoScores", "Refine"]

# (indices of a batch's images in the cache, (B, C, H, W) log-probabilities at mask size) -> (B, C, H, W)
# refined scores, e.g. a dense CRF that closes over the dataset's images and runs the batch in parallel
Refine = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass
class StegoScores:
    """Cluster probe (after matching by rule ``matching``; ``mapping[k]`` = class of cluster k) and linear probe."""

    cluster: SegmentationScores
    linear: SegmentationScores
    mapping: np.ndarray
    predictions: np.ndarray | None = None  # (N, H, W) matched cluster-probe classes when kept; C = no class
    matching: str = STEGO_MATCHING
    absent: str = DEFAULT_ABSENT

    def summary(self) -> str:
        return (
            f"cluster probe: mIoU {self.cluster.miou:5.1f}  acc {self.cluster.pixel_accuracy:5.1f} "
            f"({self.matching}) | "
            f"linear probe: mIoU {self.linear.miou:5.1f}  acc {self.linear.pixel_accuracy:5.1f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster.to_dict(),
            "linear": self.linear.to_dict(),
            "mapping": self.mapping.tolist(),
            "matching": self.matching,
            "absent_classes": self.absent,
        }


@torch.no_grad()
def stego_codes(
    head: nn.Module, x: torch.Tensor, flip_tta: bool = True, backbone: Backbone | None = None
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


def upsample_codes(
    code: torch.Tensor,
    size: tuple[int, int],
    upsample: Upsampling | None = None,
    guides: Iterator[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, C, h, w) codes -> (B, C, H, W): bilinear (STEGO's evaluation) unless ``upsample`` says
    otherwise; the guided upsampler takes the next B guides (3, H, W) of ``guides``, image by image."""
    if upsample is None or upsample.method == "bilinear":
        return F.interpolate(code, size=tuple(size), mode="bilinear", align_corners=False)
    if upsample.guided and guides is None:
        raise SettingError("the guided upsampler needs the images as guides")
    target = (size[0], size[1])
    return torch.stack(
        [
            upsample.apply(c, target, next(guides).to(c.device) if upsample.guided and guides is not None else None)
            for c in code
        ]
    )


@torch.no_grad()
def evaluate_stego(
    head: nn.Module,
    cluster_probe: ClusterProbe,
    linear_probe: LinearProbe,
    cache: FeatureCache,
    masks: np.ndarray,
    n_classes: int,
    refine: Refine | None = None,
    flip_tta: bool = True,
    batch_size: int = 8,
    device: str = "auto",
    keep_predictions: bool = False,
    matching: str = STEGO_MATCHING,
    absent: str = DEFAULT_ABSENT,
    upsample: Upsampling | None = None,
    guides: Iterable[torch.Tensor] | None = None,
) -> StegoScores:
    """Score both probes on cached features against ``masks`` ((N, H, W), cache order, 255 = ignore).

    Codes are upsampled to the masks' size before the probes: bilinearly, or by ``upsample``
    (e.g. guided by ``guides``, the images in cache order at the masks' size; ``unseg docs upsampling``).
    ``refine`` (e.g. a dense CRF) post-processes each image's probe outputs before the argmax.
    ``keep_predictions`` keeps the cluster probe's matched per-image predictions (for reports). ``matching``
    (a rule of :data:`unseg.clustering.matching.METHODS`) maps clusters to classes;
    ``absent`` (:data:`unseg.evaluation.metrics.ABSENT_RULES`) applies to both probes' mIoU.
    """
    if len(masks) != len(cache):
        raise ValueError(f"{len(masks)} masks for {len(cache)} cached images")
    width = getattr(head, "dim_in", cache.dim)
    if width != cache.dim:
        raise WeightsError(
            f"the STEGO head was trained on {width}-d features, but the cache {cache.root} holds "
            f"{cache.dim}-d ones ({cache.meta.get('backbone', 'another backbone')}): evaluate it on "
            "the backbone it was trained on"
        )
    method = resolve_method(matching, n_classes, cluster_probe.n_clusters)
    check_absent(absent)
    dev = resolve_device(device)
    head, cluster_probe, linear_probe = head.to(dev).eval(), cluster_probe.to(dev).eval(), linear_probe.to(dev).eval()
    clusters = ConfusionAccumulator(n_classes, cluster_probe.n_clusters)
    linear = ConfusionAccumulator(n_classes)
    kept = []
    start = 0
    guide_iter = iter(guides) if guides is not None else None
    for block in cache.iter_chunks(batch_size):
        code = stego_codes(head, torch.from_numpy(block).to(dev), flip_tta)
        code = upsample_codes(code, masks.shape[-2:], upsample, guide_iter)
        gt = masks[start : start + len(block)]
        for acc, scores in ((clusters, cluster_probe.log_probs(code)), (linear, linear_probe(code).log_softmax(1))):
            if refine is not None:
                scores = refine(list(range(start, start + len(block))), scores)
            pred = scores.argmax(1).cpu().numpy()
            acc.update(gt, pred)
            if keep_predictions and acc is clusters:
                kept.append(pred.astype(np.int16))
        start += len(block)
    mapping, matched = match(clusters.matrix, method)
    predictions = class_predictions(np.concatenate(kept), mapping, n_classes) if kept else None
    return StegoScores(
        scores_from_confusion(matched, absent),
        scores_from_confusion(linear.matrix, absent),
        mapping,
        predictions,
        method,
        absent,
    )
