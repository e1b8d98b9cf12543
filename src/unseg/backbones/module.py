"""Any ``nn.Module`` as a backbone: a researcher's own network scored by the same protocols.

The module maps (B, 3, H, W) images, normalised with ``mean`` / ``std``, to (B, D, h, w)
features at ``stride``. It has no CLS attention, so its saliency is the CNN backbones'
proxy: the L2 norm of the features (``unseg docs checkpoints``). Caches follow the module's class
name and a fingerprint of its state dict, as they follow a registered backbone's weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import SettingError
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, normalise_saliency

__all__ = ["ModuleBackbone", "as_backbone"]


def _module_stride(module: nn.Module, stride: int | Sequence[int] | None) -> int:
    """``stride`` given, else the module's ``stride`` attribute; one int (a square (s, s) pair is accepted)."""
    value = stride if stride is not None else getattr(module, "stride", None)
    if isinstance(value, Sequence) and len(set(value)) == 1:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SettingError(
            f"the feature stride of {type(module).__name__} is {value!r}: give the module a "
            "positive int attribute `stride` or pass stride=N (pixels per feature, equal in H and W)"
        )
    return value


class ModuleBackbone(Backbone):
    """A plain feature network behind the backbone interface (features and a norm-based saliency)."""

    def __init__(
        self,
        module: nn.Module,
        stride: int | Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.model = module
        self.stride = _module_stride(module, stride)
        self.mean, self.std = tuple(mean), tuple(std)
        self.embed_dim = self._probe_dim()

    @property
    def cache_name(self) -> str:
        return f"module-{type(self.model).__name__}"

    @torch.no_grad()
    def _probe_dim(self) -> int:
        """D from one forward pass of a 2x2-token black image (the cache records it before extraction)."""
        param = next(self.model.parameters(), None)
        probe = torch.zeros(1, 3, 2 * self.stride, 2 * self.stride, device=param.device if param is not None else "cpu")
        was_training = self.model.training
        out = self.model.eval()(probe)
        self.model.train(was_training)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[-2:] != (2, 2):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SettingError(
                f"{type(self.model).__name__} maps a (1, 3, {2 * self.stride}, {2 * self.stride}) "
                f"image to {shape}, not to (1, D, 2, 2) features: it must return (B, D, H/stride, "
                f"W/stride) with stride {self.stride}"
            )
        return int(out.shape[1])

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model(x)
        return features, normalise_saliency(features.detach().float().norm(dim=1))


def as_backbone(model: str | nn.Module, stride: int | Sequence[int] | None = None) -> Backbone:
    """A :class:`Backbone` as it is, or any other module wrapped as a :class:`ModuleBackbone`."""
    if isinstance(model, Backbone):
        return model
    if isinstance(model, nn.Module):
        return ModuleBackbone(model, stride)
    raise SettingError(
        f"{type(model).__name__} is not a backbone: give a registered name (`unseg backbones`), "
        "a unseg Backbone or an nn.Module returning (B, D, h, w) features"
    )
