"""Dense features at image resolution: bilinear and image-guided upsampling.

A backbone sees an image as a coarse grid of tokens (e.g. 28x28 at stride 16), so a
segmentation read off it has token-sized staircases and loses anything thinner than a
token. Upsampling the features before they are clustered or read by a probe gives one
label per pixel of a finer grid; the guided upsampler also follows the photograph's own
edges (``unseg docs upsampling``):

- ``bilinear``: ``F.interpolate`` (``align_corners=False``): smooth, blurs across edges;
- ``guided``: bilinear, then the guided filter of He et al. (:mod:`unseg.features.guided_filter`)
  with the image as the guide: within a window of ``radius`` tokens the features become a
  linear function of the pixel colours, so their edges move onto the photograph's. Time
  linear in the pixels (box filters), the window's coefficients fitted on a grid of
  ``cells_per_token`` cells per token (the fast guided filter) and applied to the full guide.

Both are linear in the features with weights summing to one, so upsampling commutes with
any affine map (standardise, PCA): features may be projected first and upsampled in the
smaller space. Memory is per image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..datasets.base import SegmentationDataset
from ..errors import ImageError, SettingError
from ..kinds import MAX_SIDE, as_size
from .guided_filter import fast_guided_filter

__all__ = [
    "UPSAMPLERS",
    "Upsampling",
    "bilinear_upsample",
    "guided_upsample",
    "upsample_features",
    "guide_tensor",
    "iter_guides",
    "fit_grid",
]

UPSAMPLERS = ("none", "bilinear", "guided")
"""The upsampling methods: nearest token labels, bilinear features, and the guided filter."""
GUIDE_RADIUS = 1.0
"""The guided filter's window radius, in tokens."""
GUIDE_EPS = 1e-3
"""The guided filter's ridge term, in squared RGB units of [0, 1]."""
CELLS_PER_TOKEN = 1
"""The fast guided filter fits its coefficients on this many cells per token (at most the output's pixels):
on CamVid's train split 1 scored 0.9 mIoU above 4 at K = 100 (``unseg docs upsampling``)."""
# the guided filter's radius in tokens: its time does not depend on it, and 16 tokens (a 256 px
# window at stride 16) already spans most inputs; its coefficient grid: at most 16 cells per token
MAX_GUIDE_RADIUS = 16
MAX_CELLS_PER_TOKEN = 16


@dataclass(frozen=True)
class Upsampling:
    """How token features become dense ones: ``method`` (one of :data:`UPSAMPLERS`), the target
    grid (``size`` (H, W), else ``factor`` x the token grid, else the caller's default, e.g. the
    mask size) and the guided filter's window ``radius`` (in tokens), ridge term ``eps`` (squared
    RGB in [0, 1]: smaller follows weaker edges) and ``cells_per_token``: the fast filter fits its
    coefficients on a grid this much finer than the tokens (at most the output's)."""

    method: str = "none"
    size: tuple[int, int] | None = None
    factor: float | None = None
    radius: float = GUIDE_RADIUS
    eps: float = GUIDE_EPS
    cells_per_token: int = CELLS_PER_TOKEN

    def __post_init__(self) -> None:
        if self.method not in UPSAMPLERS:
            raise SettingError(f"upsampler {self.method!r} is not one of {', '.join(UPSAMPLERS)}")
        if self.size is not None:
            if len(self.size) != 2:
                raise SettingError(f"upsampling size {self.size} is not (H, W)")
            as_size(self.size, "upsampling size")
        if self.factor is not None and not 0 < self.factor <= MAX_SIDE:
            raise SettingError(
                f"upsampling factor {self.factor} is not allowed: it must be > 0 and at most "
                f"{MAX_SIDE} (a grid side of {MAX_SIDE} px or more; ``unseg docs reliability``)"
            )
        if not (
            0 < self.radius <= MAX_GUIDE_RADIUS
            and 0 < self.eps < math.inf
            and 1 <= self.cells_per_token <= MAX_CELLS_PER_TOKEN
        ):
            raise SettingError(
                f"guided upsampling needs radius in (0, {MAX_GUIDE_RADIUS}] tokens, a finite eps > 0 "
                f"and cells_per_token 1..{MAX_CELLS_PER_TOKEN}, got radius {self.radius}, eps "
                f"{self.eps}, cells_per_token {self.cells_per_token}"
            )

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
            return as_size(
                (max(1, round(grid[0] * self.factor)), max(1, round(grid[1] * self.factor))),
                f"upsampling target ({self.factor:g} x the {grid[0]}x{grid[1]} token grid)",
            )
        return int(default[0]), int(default[1])

    def describe(self) -> dict[str, Any]:
        """The settings a result records (only the guided ones that apply)."""
        out: dict[str, Any] = {"upsample": self.method}
        if self.guided:
            out.update(radius=self.radius, eps=self.eps, cells_per_token=self.cells_per_token)
        return out

    def apply(self, feats: torch.Tensor, size: tuple[int, int], guide: torch.Tensor | None = None) -> torch.Tensor:
        """(D, h, w) -> (D, H, W) by this upsampler (``none``: nearest, the protocol's label upsampling)."""
        return upsample_features(
            feats, size, self.method, guide, radius=self.radius, eps=self.eps, cells_per_token=self.cells_per_token
        )


def bilinear_upsample(feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(D, h, w) -> (D, H, W), bilinear with ``align_corners=False`` (pixel centres line up)."""
    return F.interpolate(feats[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]


def fit_grid(grid: Sequence[int], size: Sequence[int], cells_per_token: int) -> tuple[int, int]:
    """The grid the fast guided filter fits on: ``cells_per_token`` cells per token, at most ``size``."""
    return min(int(size[0]), grid[0] * cells_per_token), min(int(size[1]), grid[1] * cells_per_token)


def guided_upsample(
    feats: torch.Tensor,
    guide: torch.Tensor,
    radius: float = GUIDE_RADIUS,
    eps: float = GUIDE_EPS,
    cells_per_token: int = CELLS_PER_TOKEN,
) -> torch.Tensor:
    """(D, h, w) features -> (D, H, W) at the guide's size: bilinear, then the (fast) guided filter with
    the guide (3, H, W), RGB in [0, 1]. ``radius`` is in tokens; the filter's coefficients are fitted
    on :func:`fit_grid` (bilinear features there) and applied to the full guide."""
    if feats.ndim != 3 or guide.ndim != 3 or guide.shape[0] != 3:
        raise SettingError(
            f"guided upsampling needs (D, h, w) features and a (3, H, W) guide, got "
            f"{tuple(feats.shape)} and {tuple(guide.shape)}"
        )
    low = fit_grid(feats.shape[-2:], guide.shape[-2:], cells_per_token)
    pixels = max(1, round(radius * max(low[0] / feats.shape[-2], low[1] / feats.shape[-1])))
    return fast_guided_filter(guide[None].to(feats.device), bilinear_upsample(feats, low)[None], pixels, eps)[0]


def upsample_features(
    feats: torch.Tensor,
    size: tuple[int, int],
    method: str = "bilinear",
    guide: torch.Tensor | None = None,
    **guided: Any,
) -> torch.Tensor:
    """(D, h, w) -> (D, H, W) by ``method`` (:data:`UPSAMPLERS`; ``none`` = nearest). ``guide``:
    (3, H, W) RGB in [0, 1], required by ``guided``; ``guided``: its keyword settings
    (:func:`guided_upsample`)."""
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
    image = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def iter_guides(dataset: SegmentationDataset, ids: Sequence[str], size: tuple[int, int]) -> Iterator[torch.Tensor]:
    """Guides of the images ``ids`` (e.g. a cache's, in its order) at ``size``, one at a time:
    decoded and resized on demand, never all held at once."""
    index = {s.id: s for s in dataset.samples}
    missing = [i for i in ids if i not in index]
    if missing:
        raise ImageError(
            f"dataset {dataset.name}/{dataset.split} has no image(s) {', '.join(missing[:5])} for the guided upsampler"
        )
    for i in ids:
        yield guide_tensor(dataset.load_image(index[i]), size)
