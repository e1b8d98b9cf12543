"""Backbone views of large photos: a sliding window, and an average over input scales.

Both are :class:`Backbone` wrappers, so extraction, caches, protocols and ``segment`` use them
as any backbone. They return features on the input's own token grid (input / stride).

- :class:`SlidingWindow` runs the wrapped backbone on overlapping windows of ``window`` px and
  stitches their tokens: a ViT sees its native input size however large the photo, and memory
  is bounded by ``window_batch`` windows per forward pass.
- :class:`MultiScale` runs it on the input resized by each of ``scales`` and averages the
  feature maps resized to the base grid: features less tied to one object size.

Combined (:func:`with_views`), each scaled image is tiled: ``MultiScale(SlidingWindow(b))``,
so every forward pass is at the window size. A wrapper's weights are the wrapped backbone's
(the same fingerprint); its ``cache_name`` adds the settings, so a cache made with other
settings never answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import SettingError
from .base import Backbone, as_size, normalise_saliency

__all__ = [
    "BackboneView",
    "SlidingWindow",
    "MultiScale",
    "with_views",
    "views_name",
    "window_positions",
    "scaled_size",
    "DEFAULT_OVERLAP",
    "DEFAULT_SCALES",
    "DEFAULT_WINDOW_BATCH",
]

DEFAULT_OVERLAP = 0.25
DEFAULT_SCALES = (1.0,)  # the input at its own size only: the plain backbone
DEFAULT_WINDOW_BATCH = 16  # windows per forward pass: the extraction's default images per batch


def _shown(size: tuple[int, int]) -> str:
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def views_name(
    window: int | Sequence[int] | None = None,
    window_overlap: float = DEFAULT_OVERLAP,
    scales: Sequence[float] = DEFAULT_SCALES,
) -> str:
    """The settings as a backbone-name suffix (``-win448o0.25``, ``-ms1+1.5``); empty for the plain backbone."""
    name = "" if window is None else f"-win{_shown(as_size(window))}o{window_overlap:g}"
    if tuple(scales) != DEFAULT_SCALES:
        name += "-ms" + "+".join(f"{s:g}" for s in scales)
    return name


def window_positions(length: int, window: int, step: int) -> list[int]:
    """Start offsets of windows along one axis: ``step`` apart from 0, the last flush with the end."""
    if window > length:
        raise SettingError(f"window {window} px is larger than the input's {length} px")
    return list(range(0, length - window, step)) + [length - window]


def _check_overlap(overlap: float) -> None:
    if not 0 <= overlap < 1:
        raise SettingError(
            f"window overlap {overlap} is outside [0, 1): it is the fraction of a window shared "
            f"with the next (default {DEFAULT_OVERLAP})"
        )


def _tent(tokens: int, device: torch.device) -> torch.Tensor:
    """Blending weight of a window's tokens along one axis: the distance of each centre to the nearest edge."""
    i = torch.arange(tokens, device=device, dtype=torch.float32) + 0.5
    return torch.minimum(i, tokens - i)


def scaled_size(size: tuple[int, int], scale: float, stride: int) -> tuple[int, int]:
    """(H, W) times ``scale``, rounded to the nearest multiple of ``stride`` (at least one token)."""
    height, width = size
    return max(1, round(height * scale / stride)) * stride, max(1, round(width * scale / stride)) * stride


class BackboneView(Backbone):
    """The wrapped backbone's weights, stride, dimension and normalisation, seen another way."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.inner = backbone

    @property
    def model(self) -> torch.nn.Module:  # type: ignore[override]  # read-only: the wrapped backbone's attribute
        return self.inner.model

    @property
    def stride(self) -> int:  # type: ignore[override]  # read-only: the wrapped backbone's attribute
        return self.inner.stride

    @property
    def embed_dim(self) -> int:  # type: ignore[override]  # read-only: the wrapped backbone's attribute
        return self.inner.embed_dim

    @property
    def mean(self) -> tuple[float, ...]:  # type: ignore[override]  # read-only: the wrapped backbone's attribute
        return self.inner.mean

    @property
    def std(self) -> tuple[float, ...]:  # type: ignore[override]  # read-only: the wrapped backbone's attribute
        return self.inner.std

    @property
    def suffix(self) -> str:
        raise NotImplementedError

    @property
    def cache_name(self) -> str:
        return self.inner.cache_name + self.suffix

    def weight_state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.weight_state_dict()

    def weight_shapes(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
        return self.inner.weight_shapes(state)

    def load_weight_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_weight_state_dict(state)

    def check_input(self, size: tuple[int, int]) -> None:
        """Raise a SettingError if an input of (H, W) px cannot be seen this way (before any extraction)."""
        if isinstance(self.inner, BackboneView):
            self.inner.check_input(size)


class SlidingWindow(BackboneView):
    """The wrapped backbone on ``window`` px windows, stitched on the whole input's token grid.

    Windows start ``step`` apart, the largest multiple of the stride that keeps at least
    ``window_overlap`` of a window shared with the next (at least one token), and the last
    window of each axis is flush with the border, so every token is covered. Where windows
    overlap, a token is the weighted mean of its windows' values; a token's weight in its
    window is a tent, the distance of its centre to the window's nearest edge (in tokens), so
    windows fade into one another instead of meeting at a seam, and the tokens near a window's
    border (the least context, a CNN's zero padding) count least. Saliency is stitched the same
    way and normalised again. At most ``window_batch`` windows go through one forward pass.
    An input the size of the window is the wrapped backbone's output, unchanged.
    """

    def __init__(
        self,
        backbone: Backbone,
        window: int | Sequence[int],
        window_overlap: float = DEFAULT_OVERLAP,
        window_batch: int = DEFAULT_WINDOW_BATCH,
    ) -> None:
        super().__init__(backbone)
        self.window = as_size(window, "window")
        stride = backbone.stride
        if min(self.window) <= 0 or self.window[0] % stride or self.window[1] % stride:
            raise SettingError(
                f"window {_shown(self.window)} px is not a positive multiple of the backbone "
                f"stride {stride} (e.g. {max(1, round(max(self.window) / stride)) * stride})"
            )
        _check_overlap(window_overlap)
        if window_batch < 1:
            raise SettingError(f"window batch {window_batch} is not allowed; it must be at least 1")
        self.window_overlap, self.window_batch = float(window_overlap), window_batch
        # the largest stride multiple within (1 - overlap) of the window (1e-9: 0.75 * 64 must stay 48, not 47.99...)
        self.steps = tuple(
            max(stride, math.floor(w * (1 - window_overlap) + 1e-9) // stride * stride) for w in self.window
        )

    @property
    def suffix(self) -> str:
        return views_name(self.window, self.window_overlap)

    def check_input(self, size: tuple[int, int]) -> None:
        if size[0] % self.stride or size[1] % self.stride:
            raise SettingError(
                f"input {_shown(size)} px is not a multiple of the backbone stride {self.stride}, "
                "so its windows' tokens would not line up"
            )
        if size[0] < self.window[0] or size[1] < self.window[1]:
            raise SettingError(
                f"window {_shown(self.window)} px is larger than the input {_shown(size)} px: use a "
                "window of at most the input size (--window, --input-size)"
            )
        super().check_input(size)

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = x.shape[-2:]
        self.check_input((height, width))
        if (height, width) == self.window:
            return self.inner.forward_with_saliency(x)
        s, (wh, ww) = self.stride, self.window
        th, tw = wh // s, ww // s
        weight = _tent(th, x.device)[:, None] * _tent(tw, x.device)[None, :]
        positions = [
            (top // s, left // s)
            for top in window_positions(height, wh, self.steps[0])
            for left in window_positions(width, ww, self.steps[1])
        ]
        total = torch.zeros(height // s, width // s, device=x.device)  # the same windows in every image
        for top, left in positions:
            total[top : top + th, left : left + tw] += weight
        crops = [(b, top, left) for b in range(len(x)) for top, left in positions]
        feats = torch.zeros(len(x), self.embed_dim, height // s, width // s, device=x.device)
        sal = torch.zeros(len(x), height // s, width // s, device=x.device)
        for start in range(0, len(crops), self.window_batch):
            chunk = crops[start : start + self.window_batch]
            f, m = self.inner.forward_with_saliency(
                torch.stack([x[b, :, top * s : (top + th) * s, left * s : (left + tw) * s] for b, top, left in chunk])
            )
            for (b, top, left), fi, mi in zip(chunk, f.float() * weight, m.float() * weight, strict=True):
                feats[b, :, top : top + th, left : left + tw] += fi
                sal[b, top : top + th, left : left + tw] += mi
        return (feats / total).to(f.dtype), normalise_saliency(sal / total)


class MultiScale(BackboneView):
    """The mean of the wrapped backbone's outputs on the input resized by each of ``scales``.

    Scale ``s`` resizes an (H, W) input bilinearly to ``round(H * s / stride) * stride`` x
    ``round(W * s / stride) * stride`` (antialiased when shrinking, as the image loader
    resizes); each scale's features and saliency are resized bilinearly (align_corners False)
    to scale 1's grid (H / stride, W / stride) and averaged, the saliency normalised again.
    Scales (1,) are the wrapped backbone, unchanged.
    """

    def __init__(self, backbone: Backbone, scales: Sequence[float]) -> None:
        super().__init__(backbone)
        self.scales = tuple(float(s) for s in scales)
        if not self.scales:
            raise SettingError("scales are empty: give at least one (1 = the input size, e.g. 1 1.5)")
        for scale in self.scales:
            if not scale > 0:
                raise SettingError(f"scale {scale:g} is not allowed: scales must be > 0 (1 = the input size)")

    @property
    def suffix(self) -> str:
        return views_name(scales=self.scales)

    def check_input(self, size: tuple[int, int]) -> None:
        for scale in self.scales:
            try:
                super().check_input(scaled_size(size, scale, self.stride))
            except SettingError as exc:
                raise SettingError(f"at scale {scale:g} of the input {_shown(size)} px: {exc}") from None

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scales == DEFAULT_SCALES:
            return self.inner.forward_with_saliency(x)
        size = (x.shape[-2], x.shape[-1])
        grid = (size[0] // self.stride, size[1] // self.stride)
        total: tuple[torch.Tensor, torch.Tensor] | None = None  # features and saliency summed over the scales
        for scale in self.scales:
            scaled = scaled_size(size, scale, self.stride)
            xs = (
                x
                if scaled == size
                else F.interpolate(
                    x,
                    size=scaled,
                    mode="bilinear",
                    align_corners=False,
                    antialias=scaled[0] < size[0] or scaled[1] < size[1],
                )
            )
            f, m = self.inner.forward_with_saliency(xs)
            dtype, f, m = f.dtype, f.float(), m.float()[:, None]
            if f.shape[-2:] != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
            total = (f, m) if total is None else (total[0] + f, total[1] + m)
        assert total is not None  # there is at least one scale
        feats, sal = total
        return (feats / len(self.scales)).to(dtype), normalise_saliency(sal[:, 0] / len(self.scales))


def with_views(
    backbone: Backbone,
    window: int | Sequence[int] | None = None,
    window_overlap: float = DEFAULT_OVERLAP,
    scales: Sequence[float] = DEFAULT_SCALES,
    window_batch: int = DEFAULT_WINDOW_BATCH,
    input_size: tuple[int, int] | None = None,
) -> Backbone:
    """``backbone`` seen through a sliding window and/or several scales; itself when neither is asked for.

    With both, every scaled input is tiled: ``MultiScale(SlidingWindow(backbone))``. With
    ``input_size`` (H, W) the views are checked against it here, before any extraction starts.
    """
    view = backbone
    if window is not None:
        view = SlidingWindow(view, window, window_overlap, window_batch)
    else:
        _check_overlap(window_overlap)  # an overlap without a window is still a value to get right
    if tuple(scales) != DEFAULT_SCALES:
        view = MultiScale(view, scales)
    if input_size is not None and isinstance(view, BackboneView):
        view.check_input(input_size)
    return view
