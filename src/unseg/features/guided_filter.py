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

import math

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
    stacked = torch.cat(
        [
            guide,
            torch.stack([guide[:, i] * guide[:, j] for i, j in _PAIRS], 1),
            src,
            (src[:, :, None] * guide[:, None]).flatten(1, 2),
        ],
        1,
    )
    means = box_mean(stacked, radius)
    mean_i, mean_ii, mean_p = means[:, :3], means[:, 3:9], means[:, 9 : 9 + c_]
    mean_ip = means[:, 9 + c_ :].reshape(b_, c_, 3, h, w)
    sigma = mean_ii - torch.stack([mean_i[:, i] * mean_i[:, j] for i, j in _PAIRS], 1)
    sigma = sigma + eps * torch.tensor([1.0, 0, 0, 1, 0, 1], dtype=sigma.dtype, device=sigma.device)[:, None, None]
    inverse = _inverse_3x3(sigma.permute(0, 2, 3, 1)).permute(0, 3, 4, 1, 2)  # (B, 3, 3, H, W)
    cov = mean_ip - mean_p[:, :, None] * mean_i[:, None]  # (B, C, 3, H, W)
    terms = [inverse[:, None, :, j] * cov[:, :, j : j + 1] for j in range(3)]
    a = terms[0] + terms[1] + terms[2]  # (B, C, 3, H, W): Σ⁻¹ cov per pixel
    b = mean_p - (a * mean_i[:, None]).sum(2)
    averaged = box_mean(torch.cat([a.flatten(1, 2), b], 1), radius)
    return averaged[:, : 3 * c_].reshape(b_, c_, 3, h, w), averaged[:, 3 * c_ :]


def _check(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> None:
    if src.ndim != 4 or guide.ndim != 4 or guide.shape[1] != 3 or guide.shape[0] != src.shape[0]:
        raise SettingError(
            f"the guided filter needs a (B, 3, H, W) guide and (B, C, h, w) input of the same B; "
            f"got {tuple(guide.shape)} and {tuple(src.shape)}"
        )
    if radius < 1 or eps <= 0:
        raise SettingError(f"the guided filter needs radius >= 1 and eps > 0; got radius {radius}, eps {eps}")


def _sample(coeffs: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear values (B, K, N) of ``coeffs`` (B, K, h, w) at output pixels (ys, xs) of a (H, W) grid,
    as ``F.interpolate(..., align_corners=False)`` gives them: pixel centre y maps to (y + 0.5) h / H - 0.5."""
    (H, W), b_ = size, coeffs.shape[0]
    grid = torch.stack([(xs + 0.5) / W * 2 - 1, (ys + 0.5) / H * 2 - 1], -1)
    return F.grid_sample(
        coeffs,
        grid[None, None].expand(b_, -1, -1, -1).float(),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[:, :, 0]


def fast_guided_filter(
    guide: torch.Tensor,
    low_src: torch.Tensor,
    radius: int,
    eps: float = 1e-3,
    argmax: bool = False,
    chunk_rows: int = 128,
    margin: float | None = None,
) -> torch.Tensor:
    """The fast guided filter: ``a``, ``b`` fitted on the grid of ``low_src`` (B, C, h, w) against the
    guide (B, 3, H, W) resized to it, then applied to the full guide block by block of ``chunk_rows``.

    ``radius``: in pixels of the coarse grid. ``argmax``: return (B, H, W) int64 channel indices
    instead of (B, C, H, W) float32 (e.g. to turn soft segment masks into labels without ever
    holding C full-resolution maps). With ``margin`` (argmax only), a pixel whose 3x3 coarse cells
    all have the same largest channel, ahead of the second by at least ``margin`` at every one of
    them, takes that channel without its full-resolution response being computed: only the band
    around the coarse boundaries is, and only for the 4 channels that respond most around it
    (``unseg docs upsampling`` measures the agreement). Where the grids are equal and ``margin`` is
    None this is the exact filter.
    """
    _check(guide, low_src, radius, eps)
    guide, low_src = guide.float(), low_src.float()
    (h, w), (H, W) = low_src.shape[-2:], guide.shape[-2:]
    low_guide = (
        guide
        if (h, w) == (H, W)
        else F.interpolate(guide, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    )
    a, b = _coefficients(low_guide, low_src, radius, eps)
    b_, c_ = low_src.shape[:2]
    if argmax and margin is not None:
        return _banded_argmax(a, b, low_guide, guide, margin)
    coeffs = torch.cat([a.flatten(1, 2), b], 1)  # (B, 4C, h, w)
    device = guide.device
    out = torch.empty(
        (b_, H, W) if argmax else (b_, c_, H, W), dtype=torch.int64 if argmax else torch.float32, device=device
    )
    xs = torch.arange(W, device=device, dtype=torch.float32)
    for start in range(0, H, chunk_rows):
        rows = torch.arange(start, min(H, start + chunk_rows), device=device, dtype=torch.float32)
        if (h, w) == (H, W):
            block = coeffs[:, :, start : start + len(rows)]
        else:
            ys, xx = torch.meshgrid(rows, xs, indexing="ij")
            block = _sample(coeffs, ys.reshape(-1), xx.reshape(-1), (H, W)).reshape(b_, -1, len(rows), W)
        ga = block[:, : 3 * c_].reshape(b_, c_, 3, len(rows), W)
        q = (ga * guide[:, None, :, start : start + len(rows)]).sum(2) + block[:, 3 * c_ :]
        if argmax:
            out[:, start : start + len(rows)] = q.argmax(1)
        else:
            out[:, :, start : start + len(rows)] = q
    return out


def _banded_argmax(
    a: torch.Tensor, b: torch.Tensor, low_guide: torch.Tensor, guide: torch.Tensor, margin: float, candidates: int = 4
) -> torch.Tensor:
    """:func:`fast_guided_filter`'s argmax, the full-resolution response computed only where the coarse
    grid is not clearly one channel (its 3x3 cells disagree, or lead by less than ``margin``), and there
    only for the ``candidates`` channels that respond most in those 3x3 cells."""
    b_, c_, h, w = b.shape
    H, W = guide.shape[-2:]
    q_low = (a * low_guide[:, None]).sum(2) + b  # (B, C, h, w)
    top = q_low.topk(min(2, c_), dim=1)
    label = top.indices[:, 0]
    lead = top.values[:, 0] - top.values[:, -1] if c_ > 1 else torch.full_like(top.values[:, 0], math.inf)
    lab = label[:, None].float()
    uniform = (F.max_pool2d(lab, 3, 1, 1) == -F.max_pool2d(-lab, 3, 1, 1))[:, 0]
    clear = uniform & (-F.max_pool2d(-lead[:, None], 3, 1, 1)[:, 0] >= margin)
    near = F.max_pool2d(q_low, 3, 1, 1).topk(min(candidates, c_), dim=1).indices  # (B, T, h, w)

    # each output pixel's nearest coarse cell, and its bilinear corners and weights (as F.interpolate)
    def axis(n: int, m: int) -> tuple[torch.Tensor, ...]:
        u = ((torch.arange(n, device=guide.device) + 0.5) * m / n - 0.5).clamp(0, m - 1)
        lo = u.floor().long()
        return ((u + 0.5).long().clamp(max=m - 1), lo, (lo + 1).clamp(max=m - 1), u - lo)

    ny, y0, y1, wy = axis(H, h)
    nx, x0, x1, wx = axis(W, w)
    out = label[:, ny][:, :, nx]
    todo = ~clear[:, ny][:, :, nx]
    # (B, h * w * C, 4): a_r, a_g, a_b, b of every (cell, channel), gathered by one flat index
    coef = torch.cat([a, b[:, :, None]], 2).permute(0, 3, 4, 1, 2).reshape(b_, -1, 4)
    for i in range(b_):
        ys, xs = torch.nonzero(todo[i], as_tuple=True)
        if len(ys) == 0:
            continue
        cand = near[i][:, ny[ys], nx[xs]].T.contiguous()  # (N, T) channels
        fy, fx = wy[ys][:, None, None], wx[xs][:, None, None]
        corner = [
            coef[i].index_select(0, (((yy[ys] * w + xx[xs]) * c_)[:, None] + cand).reshape(-1)).reshape(*cand.shape, 4)
            for yy in (y0, y1)
            for xx in (x0, x1)
        ]  # (N, T, 4) each
        v = (1 - fy) * ((1 - fx) * corner[0] + fx * corner[1]) + fy * ((1 - fx) * corner[2] + fx * corner[3])
        q = (v[..., :3] * guide[i][:, ys, xs].T[:, None]).sum(-1) + v[..., 3]
        out[i, ys, xs] = cand.gather(1, q.argmax(1, keepdim=True))[:, 0]
    return out


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float = 1e-3) -> torch.Tensor:
    """The exact filter: ``src`` (B, C, H, W) filtered with the colour image ``guide`` (B, 3, H, W) of the
    same size, RGB in [0, 1]. ``radius``: window radius in pixels; ``eps``: the ridge term, in squared guide
    units (smaller: follow weaker edges). Unbatched (C, H, W) / (3, H, W) inputs are accepted too. Returns
    ``src``'s shape, float32. (:func:`fast_guided_filter` fits on a coarser grid.)
    """
    unbatched = src.ndim == 3
    if unbatched:
        guide, src = guide[None], src[None]
    _check(guide, src, radius, eps)
    if guide.shape[-2:] != src.shape[-2:]:
        raise SettingError(f"guide {tuple(guide.shape[-2:])} and input {tuple(src.shape[-2:])} must have one size")
    out = fast_guided_filter(guide, src, radius, eps)
    return out[0] if unbatched else out
