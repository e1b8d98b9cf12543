"""Deterministic evaluation-time preprocessing shared by extraction, heads and segmentation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from ..backbones.base import as_size
from ..datasets.base import IGNORE_INDEX
from ..defaults import INPUT_SIZE

DEFAULT_INPUT_SIZE = INPUT_SIZE  # the protocols' input resolution, defined in unseg.defaults


def image_to_tensor(
    image: Image.Image, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Resize (bilinear, antialiased) to (H, W), scale to [0, 1], normalise: (3, H, W)."""
    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return TF.normalize(TF.to_tensor(image), list(mean), list(std))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to (H, W); ids (and 255) are kept exactly."""
    if mask.shape == size:
        return mask
    return np.array(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))


def upsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) integer predictions -> (B, H, W), nearest (the protocol's mask upsampling)."""
    return torch.nn.functional.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


__all__ = ["DEFAULT_INPUT_SIZE", "as_size", "image_to_tensor", "resize_mask", "upsample_labels", "IGNORE_INDEX"]
