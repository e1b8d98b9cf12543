"""Foreground from a backbone's saliency map: one algorithm for Leopart's loss masks and CBFE's noisy masks."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchvision.transforms.functional import gaussian_blur


def foreground_mask(
    saliency: torch.Tensor, keep_mass: float = 0.6, sigma: float = 0.6, kernel: int = 7, max_dropped: int = 2
) -> torch.Tensor:
    """(B, h, w) saliency -> (B, h, w) 0/1 foreground: blur, keep the most salient ``keep_mass`` of the
    mass, drop 8-connected components of at most ``max_dropped`` tokens (the authors' ``process_attentions``)."""
    b, h, w = saliency.shape
    kernel = min(kernel, 2 * min(h, w) - 1)  # reflect padding needs a kernel that fits the grid
    flat = gaussian_blur(saliency[:, None].float(), [kernel, kernel], [sigma, sigma]).flatten(1)
    values, order = flat.sort(dim=1)
    kept = (values / values.sum(dim=1, keepdim=True)).cumsum(dim=1) > 1 - keep_mass
    mask = torch.zeros_like(kept).scatter_(1, order, kept).reshape(b, h, w).cpu().numpy()
    within_image = np.zeros((3, 3, 3), bool)
    within_image[1] = True  # 8-connectivity inside each image, none across the batch
    labels, _ = ndimage.label(mask, structure=within_image)
    small = np.bincount(labels.ravel()) <= max_dropped
    small[0] = False
    mask[small[labels]] = False
    return torch.from_numpy(mask).to(saliency.device, torch.float32)
