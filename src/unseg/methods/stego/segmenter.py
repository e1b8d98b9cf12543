"""A trained STEGO head and cluster probe behind the segmenter interface of ``unseg.segment``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...features.upsample import Upsampling
from .evaluate import stego_codes, upsample_codes
from .model import ClusterProbe, StegoHead

__all__ = ["StegoSegmenter"]


@dataclass
class StegoSegmenter:
    """Segments = the cluster probe's argmax over flip-averaged codes, read at the input size as in
    STEGO's evaluation (or on the upsampled grid); the same interface as
    :class:`unseg.unsupervised.FittedSegmenter`."""

    head: StegoHead
    probe: ClusterProbe
    device: torch.device

    def __post_init__(self) -> None:
        self.head, self.probe = self.head.to(self.device).eval(), self.probe.to(self.device).eval()

    @property
    def num_labels(self) -> int:
        return self.probe.n_clusters

    @torch.no_grad()
    def segment_features(
        self,
        features: np.ndarray,
        size: tuple[int, int],
        upsample: Upsampling,
        guide: torch.Tensor | None = None,
        with_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One image's (D, h, w) features -> segment ids at ``size`` (or the upsampled grid) and with
        ``with_logits`` the probe's log-probabilities on the token grid (a dense CRF's unary)."""
        code = stego_codes(self.head, torch.from_numpy(features)[None].to(self.device))
        target = upsample.target(features.shape[1:], size)
        up = (
            upsample_codes(code, target, upsample, None if guide is None else iter([guide]))
            if upsample.active
            else F.interpolate(code, size=size, mode="bilinear", align_corners=False)
        )
        labels = self.probe.log_probs(up)[0].argmax(0).cpu().numpy()
        logits = self.probe.log_probs(code)[0].cpu().numpy() if with_logits else None
        return labels, logits
