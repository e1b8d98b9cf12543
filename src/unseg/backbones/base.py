"""The one backbone interface: dense features (B, D, h, w) and a saliency map (B, h, w)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..kinds import as_size  # noqa: F401  (the one reading of a size; re-exported)
from ..registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A frozen-or-trainable image encoder seen only through dense features.

    ``forward`` returns features of stride ``stride`` for any input size divisible by
    it. ``forward_with_saliency`` also returns a foreground saliency map on the same
    grid, normalised to sum to 1 per image (ViTs: last-block CLS attention; CNNs: a
    documented proxy).
    """

    model: nn.Module  # the wrapped network; its state dict is the checkpoint layout
    embed_dim: int
    stride: int
    mean: tuple[float, ...] = IMAGENET_MEAN  # per input channel
    std: tuple[float, ...] = IMAGENET_STD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_saliency(x)[0]

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_saliency(x)[1]

    @property
    def cache_name(self) -> str:
        """The network's name in feature-cache folders and their identity (with the weights' fingerprint)."""
        return type(self).__name__

    def weight_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters in the layout the original checkpoints use (DINO's keys for ViTs)."""
        return self.model.state_dict()

    def weight_shapes(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
        """The shape each tensor of :meth:`weight_state_dict` must have to load ``state`` (a checkpoint's),
        checked before loading to name a mismatch; a network that adopts another shape says so here."""
        return {k: v.shape for k, v in self.weight_state_dict().items()}

    def load_weight_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`weight_state_dict`; strict, so a wrong layout fails."""
        self.model.load_state_dict(state, strict=True)


@dataclass(frozen=True)
class BackboneSpec:
    """What ``unseg backbones`` lists, and how to build it."""

    name: str
    embed_dim: int
    stride: int
    weights: str  # where pretrained weights come from
    build: Callable[..., Backbone]


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def normalise_saliency(s: torch.Tensor) -> torch.Tensor:
    """(B, h, w) non-negative map -> each image sums to 1."""
    s = s.clamp_min(0)
    return s / s.flatten(1).sum(1).clamp_min(1e-12)[:, None, None]
