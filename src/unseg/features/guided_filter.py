"""The guided filter (He, Sun and Tang, ECCV 2010 / TPAMI 2013): edge-aware filtering in time linear in the pixels.

Within every (2r+1)x(2r+1) window the output is a linear function of the guide image,
``q = a·I + b``, fitted by ridge regression to the input ``p`` over the window:
``a = (Σ + εU)⁻¹ cov(I, p)``, ``b = mean(p) − a·mean(I)`` (Σ the guide's 3x3 colour covariance in the
window), and each pixel's ``a`` and ``b`` are averaged over the windows that contain it. Where the
guide is flat, ``q`` is a smoothed ``p``; where the guide has an edge, ``q`` has it too. Every mean
is a box filter computed from cumulative sums, so the time does not depend on ``r``. Near the
border a window holds only its pixels inside the image (the mean divides by their count), as in
the authors' reference code.

The fast variant (He and Sun, 2015) fits ``a`` and ``b`` on a coarser grid (the guide and input
subsampled), upsamples them bilinearly and applies them to the full-resolution guide: the fit
costs what the coarse grid costs, and the edges still come from the full guide. The last step
runs over blocks of output rows, so memory stays bounded for any photo size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SettingError

__all__ = ["box_mean", "guided_filter", "fast_guided_filter"]

_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))  # the distinct entries of a symmetric 3x3 matrix


def _box_sum_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over the window [i - r, i + r] ∩ [0, n) along ``dim``, from one cumulative sum: with r + 1
    zeros before it and r copies of the total after it, window i is ``c[i + 2r + 1] - c[i]``."""
    dim %= x.ndim
    n = x.shape[dim]
    c = torch.cumsum(x, dim)
    before = list(c.shape)
    before[dim] = radius + 1
    after = list(c.shape)
    after[dim] = radius
    c = torch.cat([c.new_zeros(before), c, c.narrow(dim, n - 1, 1).expand(after)], dim)
    return c.narrow(dim, 2 * radius + 1, n) - c.narrow(dim, 0, n)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(..., H, W) -> mean over each pixel's (2r+1)² window clipped to the image; O(H·W) for any ``radius``.

    Sums run in float64: cumulative sums over a long row lose float32's digits, and the guided
    filter subtracts means of squares (its variances) that must keep them.
    """
    h, w = x.shape[-2:]
    total = _box_sum_1d(_box_sum_1d(x.double(), radius, -2), radius, -1)
    ones = torch.ones(h, w, dtype=torch.float64, device=x.device)
    count = _box_sum_1d(_box_sum_1d(ones, radius, -2), radius, -1)
    return (total / count).to(x.dtype)


def _inverse_3x3(s: torch.Tensor) -> torch.Tensor:
    """Inverses of symmetric 3x3 matrices given by their 6 distinct entries (…, 6) in :data:`_PAIRS`
    order, from the adjugate: elementwise, so 100k pixels cost about as much as one batched op."""
    xx, xy, xz, yy, yz, zz = s.unbind(-1)
    c_xx, c_xy, c_xz = yy * zz - yz * yz, xz * yz - xy * zz, xy * yz - xz * yy
    c_yy, c_yz, c_zz = xx * zz - xz * xz, xy * xz - xx * yz, xx * yy - xy * xy
    det = xx * c_xx + xy * c_xy + xz * c_xz
    rows = [[c_xx, c_xy, c_xz], [c_xy, c_yy, c_yz], [c_xz, c_yz, c_zz]]
    return torch.stack([torch.stack(r, -1) for r in rows], -2) / det[..., None, None]


def _coefficients(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel ``a`` (B, C, 3, H, W) and ``b`` (B, C, H, W) of the windows' ridge regressions,
    already averaged over the windows covering each pixel."""
    b_, c_, h, w = src.shape
    # every window mean in one pass: I (3), I_i I_j (6), p (C), I_i p (3C)
    stacked = torch.cat([guide, torch.stack([guide[:, i] * guide[:, j] for i, j in _PAIRS], 1), src,
                         (src[:, :, None] * guide[:, None]).flatten(1, 2)], 1)
    means = box_mean(stacked, radius)
    mean_i, mean_ii, mean_p = means[:, :3], means[:, 3:9], means[:, 9:9 + c_]
    mean_ip = means[:, 9 + c_:].reshape(b_, c_, 3, h, w)
    sigma = mean_ii - torch.stack([mean_i[:, i] * mean_i[:, j] for i, j in _PAIRS], 1)
    sigma = sigma + eps * torch.tensor([1.0, 0, 0, 1, 0, 1], dtype=sigma.dtype, device=sigma.device)[:, None, None]
    inverse = _inverse_3x3(sigma.permute(0, 2, 3, 1)).permute(0, 3, 4, 1, 2)  # (B, 3, 3, H, W)
    cov = mean_ip - mean_p[:, :, None] * mean_i[:, None]  # (B, C, 3, H, W)
    a = sum(inverse[:, None, :, j] * cov[:, :, j:j + 1] for j in range(3))  # (B, C, 3, H, W): Σ⁻¹ cov per pixel
    b = mean_p - (a * mean_i[:, None]).sum(2)
    averaged = box_mean(torch.cat([a.flatten(1, 2), b], 1), radius)
    return averaged[:, :3 * c_].reshape(b_, c_, 3, h, w), averaged[:, 3 * c_:]


def _check(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> None:
    if src.ndim != 4 or guide.ndim != 4 or guide.shape[1] != 3 or guide.shape[0] != src.shape[0]:
        raise SettingError(f"the guided filter needs a (B, 3, H, W) guide and (B, C, h, w) input of the same B; "
                           f"got {tuple(guide.shape)} and {tuple(src.shape)}")
    if radius < 1 or eps <= 0:
        raise SettingError(f"the guided filter needs radius >= 1 and eps > 0; got radius {radius}, eps {eps}")


def fast_guided_filter(guide: torch.Tensor, low_src: torch.Tensor, radius: int, eps: float = 1e-3,
                       argmax: bool = False, chunk_rows: int = 128) -> torch.Tensor:
    """The fast guided filter: ``a``, ``b`` fitted on the grid of ``low_src`` (B, C, h, w) against the
    guide (B, 3, H, W) resized to it, then applied to the full guide block by block of ``chunk_rows``.

    ``radius``: in pixels of the coarse grid. ``argmax``: return (B, H, W) int64 channel indices
    instead of (B, C, H, W) float32 (e.g. to turn soft segment masks into labels without ever
    holding C full-resolution maps). Where the grids are equal this is the exact filter.
    """
    _check(guide, low_src, radius, eps)
    guide, low_src = guide.float(), low_src.float()
    (h, w), (H, W) = low_src.shape[-2:], guide.shape[-2:]
    low_guide = guide if (h, w) == (H, W) else F.interpolate(guide, size=(h, w), mode="bilinear",
                                                             align_corners=False, antialias=True)
    a, b = _coefficients(low_guide, low_src, radius, eps)
    b_, c_ = low_src.shape[:2]
    coeffs = torch.cat([a.flatten(1, 2), b], 1)  # (B, 4C, h, w)
    out = torch.empty((b_, H, W) if argmax else (b_, c_, H, W), dtype=torch.int64 if argmax else torch.float32,
                      device=guide.device)
    # bilinear, align_corners=False, as F.interpolate: output pixel centre x maps to (x + 0.5) w / W - 0.5
    xs = ((torch.arange(W, device=guide.device, dtype=torch.float32) + 0.5) / W) * 2 - 1
    for start in range(0, H, chunk_rows):
        rows = torch.arange(start, min(H, start + chunk_rows), device=guide.device, dtype=torch.float32)
        if (h, w) == (H, W):
            block = coeffs[:, :, start:start + len(rows)]
        else:
            ys = ((rows + 0.5) / H) * 2 - 1
            grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).expand(b_, -1, -1, -1)
            block = F.grid_sample(coeffs, grid, mode="bilinear", padding_mode="border", align_corners=False)
        ga = block[:, :3 * c_].reshape(b_, c_, 3, len(rows), W)
        q = (ga * guide[:, None, :, start:start + len(rows)]).sum(2) + block[:, 3 * c_:]
        if argmax:
            out[:, start:start + len(rows)] = q.argmax(1)
        else:
            out[:, :, start:start + len(rows)] = q
    return out


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float = 1e-3,
                  subsample: int = 1) -> torch.Tensor:
    """Filter ``src`` (B, C, H, W) guided by the colour image ``guide`` (B, 3, H, W), RGB in [0, 1].

    ``radius``: window radius in pixels of (H, W); ``eps``: the ridge term, in squared guide units
    (smaller: follow weaker edges); ``subsample``: the fast variant's factor ``s`` (1 = the exact
    filter; else ``a``, ``b`` are fitted at 1/s of the size with radius r/s). Unbatched (C, H, W) /
    (3, H, W) inputs are accepted too. Returns ``src``'s shape, float32.
    """
    unbatched = src.ndim == 3
    if unbatched:
        guide, src = guide[None], src[None]
    _check(guide, src, radius, eps)
    if guide.shape[-2:] != src.shape[-2:] or subsample < 1:
        raise SettingError(f"guide {tuple(guide.shape[-2:])} and input {tuple(src.shape[-2:])} must have one size, "
                           f"and subsample ({subsample}) must be >= 1")
    h, w = src.shape[-2:]
    if subsample > 1:
        small = (max(1, round(h / subsample)), max(1, round(w / subsample)))
        src = F.interpolate(src.float(), size=small, mode="bilinear", align_corners=False, antialias=True)
        radius = max(1, round(radius / subsample))
    out = fast_guided_filter(guide, src, radius, eps)
    return out[0] if unbatched else out
