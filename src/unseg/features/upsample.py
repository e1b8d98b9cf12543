"""Dense features at image resolution: bilinear and image-guided (joint bilateral) upsampling.

A backbone sees an image as a coarse grid of tokens (e.g. 28x28 at stride 16), so a
segmentation read off it has token-sized staircases and loses anything thinner than a
token. Upsampling the features before they are clustered or read by a probe gives one
label per pixel of a finer grid; the guided upsampler also follows the photograph's own
edges (``unseg docs upsampling``):

- ``bilinear``: ``F.interpolate`` (``align_corners=False``): smooth, blurs across edges;
- ``guided``: joint bilateral upsampling (Kopf et al., SIGGRAPH 2007). Each output pixel
  is a weighted mean of the low-resolution cells in a ``(2r+1)^2`` window around it;
  weight = spatial Gaussian (``sigma_spatial``, in cells) x range Gaussian on the colour
  difference between the pixel's guide colour and the cell's (the guide averaged over
  the cell). A cell across an edge has another colour, so it barely counts.

Both weight sets sum to one, so upsampling commutes with any affine map (standardise,
PCA): features may be projected first and upsampled in the smaller space. Memory is per
image, and the guided upsampler works on blocks of ``chunk_rows`` output rows, so it never
holds more than a few (D, chunk_rows, W) tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..datasets.base import SegmentationDataset
from ..errors import ImageError, SettingError
from ..kinds import MAX_SIDE, as_size

__all__ = ["UPSAMPLERS", "Upsampling", "bilinear_upsample", "guided_upsample", "upsample_features",
           "guide_tensor", "iter_guides"]

UPSAMPLERS = ("none", "bilinear", "guided")
# the guided window's radius, in cells: a block's weights hold (2r+1)^2 maps of chunk_rows x W floats,
# r = 16 for a 512 px wide target (about 143 MB)
MAX_GUIDE_RADIUS = 16


@dataclass(frozen=True)
class Upsampling:
    """How token features become dense ones: ``method`` (one of :data:`UPSAMPLERS`), the target
    grid (``size`` (H, W), else ``factor`` x the token grid, else the caller's default, e.g. the
    mask size) and the guided upsampler's window ``radius`` (cells), ``sigma_spatial`` (cells),
    ``sigma_range`` (RGB in [0, 1]) and ``chunk_rows`` (output rows per block)."""

    method: str = "none"
    size: tuple[int, int] | None = None
    factor: float | None = None
    radius: int = 2
    sigma_spatial: float = 1.0
    sigma_range: float = 0.1
    chunk_rows: int = 64

    def __post_init__(self) -> None:
        if self.method not in UPSAMPLERS:
            raise SettingError(f"upsampler {self.method!r} is not one of {', '.join(UPSAMPLERS)}")
        if self.size is not None:
            if len(self.size) != 2:
                raise SettingError(f"upsampling size {self.size} is not (H, W)")
            as_size(self.size, "upsampling size")
        if self.factor is not None and not 0 < self.factor <= MAX_SIDE:
            raise SettingError(f"upsampling factor {self.factor} is not allowed: it must be > 0 and at most "
                               f"{MAX_SIDE} (a grid side of {MAX_SIDE} px or more; ``unseg docs reliability``)")
        if not (0 <= self.radius <= MAX_GUIDE_RADIUS and 0 < self.sigma_spatial < math.inf
                and 0 < self.sigma_range < math.inf and self.chunk_rows >= 1):
            raise SettingError(f"guided upsampling needs radius 0..{MAX_GUIDE_RADIUS}, finite sigmas > 0 and "
                               f"chunk_rows >= 1, got radius {self.radius}, sigma_spatial {self.sigma_spatial}, "
                               f"sigma_range {self.sigma_range}, chunk_rows {self.chunk_rows}")

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def guided(self) -> bool:
        return self.method == "guided"

    def target(self, grid: Sequence[int], default: Sequence[int]) -> tuple[int, int]:
        """The output grid for token grid ``grid``: ``size``, else ``factor`` x grid, else ``default``."""
        if self.size is not None:
            return int(self.size[0]), int(self.size[1])
        if self.factor is not None:  # bounded like any size: refused before anything is allocated
            return as_size((max(1, round(grid[0] * self.factor)), max(1, round(grid[1] * self.factor))),
                           f"upsampling target ({self.factor:g} x the {grid[0]}x{grid[1]} token grid)")
        return int(default[0]), int(default[1])

    def describe(self) -> dict[str, Any]:
        """The settings a result records (only the guided ones that apply)."""
        out: dict[str, Any] = {"upsample": self.method}
        if self.guided:
            out.update(radius=self.radius, sigma_spatial=self.sigma_spatial, sigma_range=self.sigma_range)
        return out

    def apply(self, feats: torch.Tensor, size: tuple[int, int], guide: torch.Tensor | None = None) -> torch.Tensor:
        """(D, h, w) -> (D, H, W) by this upsampler (``none``: nearest, the protocol's label upsampling)."""
        return upsample_features(feats, size, self.method, guide, radius=self.radius,
                                 sigma_spatial=self.sigma_spatial, sigma_range=self.sigma_range,
                                 chunk_rows=self.chunk_rows)


def bilinear_upsample(feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(D, h, w) -> (D, H, W), bilinear with ``align_corners=False`` (pixel centres line up)."""
    return F.interpolate(feats[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]


def _centres(out: int, low: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous low-res coordinate of each output pixel centre and its nearest cell index."""
    u = (torch.arange(out, device=device, dtype=torch.float32) + 0.5) * (low / out) - 0.5
    return u, u.round().long().clamp(0, low - 1)


def _guided_block(feats: torch.Tensor, low_guide: torch.Tensor, guide: torch.Tensor, uy: torch.Tensor,
                  cy: torch.Tensor, ux: torch.Tensor, cx: torch.Tensor, radius: int, sigma_spatial: float,
                  sigma_range: float) -> torch.Tensor:
    """Output rows of one block: (D, rows, W) from features (D, h, w) and the block's guide (3, rows, W).

    Window weights are built for all offsets at once, (K, rows, W) with K = (2r+1)^2 (no D),
    normalised by a softmax over the window (no underflow for far colours), then the
    features are accumulated offset by offset: never a (K, D, rows, W) tensor.
    """
    h, w = feats.shape[-2:]
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    logw, index = [], []
    for dy, dx in offsets:
        qy, qx = cy + dy, cx + dx
        valid = ((qy >= 0) & (qy < h))[:, None] & ((qx >= 0) & (qx < w))[None, :]
        qy, qx = qy.clamp(0, h - 1), qx.clamp(0, w - 1)
        spatial = (qy - uy).pow(2)[:, None] + (qx - ux).pow(2)[None, :]
        colour = low_guide[:, qy][:, :, qx]  # (3, rows, W): guide colour of the cell each pixel looks at
        rng = (guide - colour).pow(2).sum(0)
        lw = -spatial / (2 * sigma_spatial ** 2) - rng / (2 * sigma_range ** 2)
        logw.append(lw.masked_fill(~valid, float("-inf")))
        index.append((qy, qx))
    weights = torch.softmax(torch.stack(logw), dim=0)  # the centre cell is always valid: no empty window
    out = feats.new_zeros(feats.shape[0], len(cy), len(cx))
    for wk, (qy, qx) in zip(weights, index):
        out += wk * feats[:, qy][:, :, qx]
    return out


def guided_upsample(feats: torch.Tensor, guide: torch.Tensor, radius: int = 2, sigma_spatial: float = 1.0,
                    sigma_range: float = 0.1, chunk_rows: int | None = 64) -> torch.Tensor:
    """Joint bilateral upsampling of (D, h, w) features to the guide's (H, W); guide (3, H, W) RGB in [0, 1].

    The guide's colour of a cell is the guide averaged over that cell. ``chunk_rows``
    output rows are computed at a time (None: all at once); the result does not depend on it.
    """
    if feats.ndim != 3 or guide.ndim != 3 or guide.shape[0] != 3:
        raise SettingError(f"guided upsampling needs (D, h, w) features and a (3, H, W) guide, got "
                           f"{tuple(feats.shape)} and {tuple(guide.shape)}")
    feats, guide = feats.float(), guide.to(feats.device, torch.float32)
    (h, w), (H, W) = feats.shape[-2:], guide.shape[-2:]
    low_guide = F.adaptive_avg_pool2d(guide[None], (h, w))[0]
    uy, cy = _centres(H, h, feats.device)
    ux, cx = _centres(W, w, feats.device)
    rows = chunk_rows or H
    out = feats.new_empty(feats.shape[0], H, W)
    for start in range(0, H, rows):
        sl = slice(start, min(H, start + rows))
        out[:, sl] = _guided_block(feats, low_guide, guide[:, sl], uy[sl], cy[sl], ux, cx, radius, sigma_spatial,
                                   sigma_range)
    return out


def upsample_features(feats: torch.Tensor, size: tuple[int, int], method: str = "bilinear",
                      guide: torch.Tensor | None = None, **guided: Any) -> torch.Tensor:
    """(D, h, w) -> (D, H, W) by ``method`` (:data:`UPSAMPLERS`; ``none`` = nearest). ``guide``:
    (3, H, W) RGB in [0, 1], required by ``guided``; ``guided``: its keyword settings."""
    if method == "none":
        return F.interpolate(feats[None].float(), size=tuple(size), mode="nearest")[0]
    if method == "bilinear":
        return bilinear_upsample(feats, size)
    if method == "guided":
        if guide is None:
            raise SettingError("the guided upsampler needs the image as a guide")
        if tuple(guide.shape[-2:]) != tuple(size):
            raise SettingError(f"guide of size {tuple(guide.shape[-2:])} is not the target size {tuple(size)}")
        return guided_upsample(feats, guide, **guided)
    raise SettingError(f"upsampler {method!r} is not one of {', '.join(UPSAMPLERS)}")


def guide_tensor(image: Image.Image | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """An RGB image resized (bilinear) to (H, W) as a (3, H, W) float tensor in [0, 1]: the guide."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def iter_guides(dataset: SegmentationDataset, ids: Sequence[str], size: tuple[int, int]) -> Iterator[torch.Tensor]:
    """Guides of the images ``ids`` (e.g. a cache's, in its order) at ``size``, one at a time:
    decoded and resized on demand, never all held at once."""
    index = {s.id: s for s in dataset.samples}
    missing = [i for i in ids if i not in index]
    if missing:
        raise ImageError(f"dataset {dataset.name}/{dataset.split} has no image(s) {', '.join(missing[:5])} "
                         "for the guided upsampler")
    for i in ids:
        yield guide_tensor(dataset.load_image(index[i]), size)
