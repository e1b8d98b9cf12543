"""Per-image spectral segmentation: each photo cut into segments from its own features and pixels.

The family of normalised cuts and Deep Spectral Methods (Melas-Kyriazi et al., CVPR 2022;
``unseg docs photos``). For one image's tokens:

1. **Graph.** Tokens are centred on the image's mean and L2-normalised; the affinity of two
   tokens is their cosine, negatives set to 0, raised to ``sharpness`` (a sharper graph keeps
   weakly similar regions apart: the features of an ImageNet CNN are similar everywhere, so the
   plain cosine of Deep Spectral Methods makes one blurred cluster). Optionally plus ``colour``
   times Deep Spectral Methods' colour-and-position affinity (binary k-nearest neighbours in
   (r, g, b, x, y) at two position weights), scaled to the feature graph's total weight.
2. **Eigenvectors** of the generalised problem (D − W) v = λ D v, the ``oversegments`` smallest
   (from the normalised Laplacian; each vector's sign flipped when most of it is positive).
   2x2 blocks of tokens that are all alike (every centred cosine in the block at least ``lump``)
   are one unknown: the problem is projected onto vectors constant on those blocks (a Galerkin
   projection, exact when the block's tokens are equal), and the dense eigensolver's time falls
   with the cube of the unknowns.
3. **Over-segmentation.** k-means on eigenvectors 1..k, each weighted by 1 − λ, into k =
   ``oversegments`` clusters (the weights matter where a region is uniform: there the vectors of
   λ near 1 are noise).
4. **Merging: the number of segments comes from the data.** Adjacent segments are merged, most
   similar first, while the cosine of their mean features, centred on a reference (the folder's
   mean token), is at least ``merge_threshold``; or, with ``segments`` given, until that many
   remain; slivers of fewer than ``min_tokens`` tokens then join their most similar neighbour.
   The centre is the folder's, not the image's: a photo of one cat keeps few segments,
   a street scene many (``unseg docs photos`` measures both).
5. **Boundaries at the photo's resolution.** The segments' soft masks are filtered by the fast
   guided filter (:mod:`unseg.features.guided_filter`) with the photo as the guide, and each
   pixel takes the segment of largest response: colour and position enter here, pixel by pixel.
6. **Foreground.** A segment is background when its share of the image border is at least
   ``background_ratio`` times its share of the image: background hugs the frame, objects sit in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from ..clustering import kmeans
from ..errors import SettingError
from ..features.guided_filter import fast_guided_filter
from ..features.upsample import fit_grid

EMBEDDINGS = ("spectral", "tokens")

__all__ = [
    "EMBEDDINGS",
    "SpectralSettings",
    "affinity",
    "spectral_embedding",
    "alike_blocks",
    "oversegment",
    "segment_sums",
    "merge_segments",
    "refine_segments",
    "background_segments",
    "colour_affinity",
]


@dataclass(frozen=True)
class SpectralSettings:
    """The per-image method's settings (``unseg docs photos``); the defaults measured best on CamVid.

    ``embedding``: what the over-segmentation's k-means runs on: ``spectral`` (the graph's
    eigenvectors) or ``tokens`` (the image's centred, L2-normalised tokens: plain per-image k-means,
    the baseline the graph is measured against). ``sharpness``: power of the clipped cosine
    affinity. ``colour``: weight of the colour-and-position affinity in the graph (0: none).
    ``oversegments``: eigenvectors and segments before merging. ``lump``: 2x2 blocks of tokens whose
    centred cosines are all at least this are solved as one unknown (None: every token its own).
    ``merge_threshold``: merge adjacent
    segments while their centred mean features' cosine is at least this. ``segments``: a fixed
    number per image instead (merged down to it). ``min_tokens``: smaller segments (slivers of mixed
    tokens along an edge) join their most similar neighbour. ``radius``, ``eps``,
    ``cells_per_token``: the guided filter that puts the boundaries on the photo's edges (window in
    tokens; ridge term; fitting grid; the coarse lead above which a pixel's segment is not computed
    at full resolution, :func:`unseg.features.guided_filter.fast_guided_filter`).
    ``background_ratio``: border share over area share above which a segment is background.
    ``niter``, ``nredo``: the over-segmentation's k-means.
    """

    embedding: str = "spectral"
    sharpness: float = 8.0
    colour: float = 0.0
    oversegments: int = 24
    lump: float | None = 0.5
    merge_threshold: float = 0.5
    segments: int | None = None
    min_tokens: int = 4
    radius: float = 1.0
    eps: float = 1e-3
    cells_per_token: int = 2
    margin: float = 0.1
    background_ratio: float = 1.0
    niter: int = 20
    nredo: int = 1

    def __post_init__(self) -> None:
        checks = {
            "embedding": self.embedding in EMBEDDINGS,
            "sharpness": self.sharpness > 0,
            "colour": self.colour >= 0,
            "oversegments": self.oversegments >= 2,
            "lump": self.lump is None or -1 <= self.lump <= 1,
            "merge_threshold": -1 <= self.merge_threshold <= 1,
            "segments": self.segments is None or 1 <= self.segments <= self.oversegments,
            "min_tokens": self.min_tokens >= 1,
            "radius": self.radius > 0,
            "eps": self.eps > 0,
            "cells_per_token": self.cells_per_token >= 1,
            "margin": self.margin >= 0,
            "background_ratio": self.background_ratio > 0,
            "niter": self.niter >= 1,
            "nredo": self.nredo >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise SettingError(
                f"spectral settings out of range: {', '.join(f'{b}={getattr(self, b)}' for b in bad)} "
                f"(embedding one of {', '.join(EMBEDDINGS)}; sharpness, radius, eps, background_ratio > 0; "
                "colour >= 0; oversegments >= 2; lump and merge_threshold in [-1, 1]; "
                "segments 1..oversegments; margin >= 0; min_tokens, cells_per_token, niter, nredo >= 1)"
            )

    def describe(self) -> dict[str, Any]:
        return dict(vars(self))


def colour_affinity(
    image: np.ndarray, neighbours: tuple[int, ...] = (20, 10), position_weights: tuple[float, ...] = (2.0, 0.1)
) -> np.ndarray:
    """Deep Spectral Methods' colour-and-position affinity of the pixels of a small (h, w, 3) image in
    [0, 1]: for each pixel its ``k`` nearest pixels in (r, g, b, p·x, p·y), x and y in [0, 1], once per
    (k, p); each link counts 1, both ways (symmetric). Dense (h·w, h·w): for token-sized images."""
    h, w = image.shape[:2]
    n = h * w
    x, y = np.tile(np.linspace(0, 1, w), h), np.repeat(np.linspace(0, 1, h), w)
    out = np.zeros((n, n))
    for k, weight in zip(neighbours, position_weights, strict=False):
        points = np.column_stack([image.reshape(n, 3), weight * x, weight * y])
        _, near = cKDTree(points).query(points, k=min(k, n))
        rows = np.repeat(np.arange(n), near.shape[1])
        np.add.at(out, (rows, near.ravel()), 1.0)
        np.add.at(out, (near.ravel(), rows), 1.0)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _centred_unit(tokens: np.ndarray) -> np.ndarray:
    """(n, D) float32: one image's tokens centred on their mean and L2-normalised (the graph's and the blocks')."""
    return _unit(tokens - tokens.mean(0)).astype(np.float32)


def affinity(tokens: np.ndarray, settings: SpectralSettings, image: np.ndarray | None = None) -> np.ndarray:
    """(n, n) float32 affinity of one image's (n, D) tokens (step 1); ``image``: the (h, w, 3) image
    at the token grid in [0, 1], needed when ``settings.colour`` > 0."""
    return _affinity(_centred_unit(tokens), settings, image)


def _affinity(unit: np.ndarray, settings: SpectralSettings, image: np.ndarray | None) -> np.ndarray:
    """:func:`affinity` of tokens already centred and normalised (:func:`_centred_unit`)."""
    w = np.maximum(unit @ unit.T, 0)
    if float(settings.sharpness).is_integer():  # by squaring: a few products, not a power per entry
        base, w, e = w, np.ones_like(w), int(settings.sharpness)
        while e:
            if e & 1:
                w *= base
            e >>= 1
            if e:
                base = base * base
    else:
        w **= np.float32(settings.sharpness)
    if settings.colour > 0:
        if image is None:
            raise SettingError("a colour affinity needs the image at the token grid")
        colour = colour_affinity(image)
        w += settings.colour * colour * (w.sum() / colour.sum())
    return w


def spectral_embedding(w: np.ndarray, k: int, blocks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest eigenvalues and eigenvectors (n, k) of (D − W) v = λ D v (step 2).

    Solved as the symmetric normalised Laplacian I − D^-½ W D^-½ (same eigenvalues; v = D^-½ u, so
    vᵀ D v = 1); each vector's sign is flipped when more than half of it (but not all) is positive,
    so the smaller side of a cut is positive. ``blocks`` (n,) ids 0..m-1 (:func:`alike_blocks`):
    solve for vectors constant on each block, the problem projected onto the blocks' indicators
    (W and D summed over blocks), then read back at every token.
    """
    if blocks is None:
        blocks = np.arange(len(w))
    m = int(blocks.max()) + 1
    if m < len(w):  # Pᵀ W P with P the blocks' indicators, by sums over the sorted tokens
        order = np.argsort(blocks, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(blocks[order]) != 0])
        w = np.add.reduceat(np.add.reduceat(w[order], starts, axis=0)[:, order], starts, axis=1)
    d = w.sum(1)
    if (d <= 0).any():
        raise SettingError("a token with no affinity to any other: the graph is not connected")
    s = 1 / np.sqrt(d)
    laplacian = w * s[:, None]  # I − D^-½ W D^-½, in place on one copy
    laplacian *= -s[None]
    laplacian.flat[:: m + 1] += 1
    k = min(k, m)
    values, vectors = scipy.linalg.eigh(laplacian, subset_by_index=[0, k - 1], driver="evr")
    vectors = (vectors * s[:, None])[blocks]
    positive = (vectors > 0).mean(0)
    vectors[:, (positive > 0.5) & (positive < 1.0)] *= -1
    return values, vectors


def alike_blocks(unit: np.ndarray, h: int, w: int, threshold: float) -> np.ndarray:
    """(h * w,) block ids 0..m-1 of an image's (h * w, D) unit tokens: each 2x2 block (on the even
    grid) whose six cosines are all at least ``threshold`` shares one id; every other token has its own."""
    grid = unit.reshape(h, w, -1)
    hb, wb = h // 2, w // 2
    corners = [grid[dy : 2 * hb : 2, dx : 2 * wb : 2] for dy in (0, 1) for dx in (0, 1)]  # 4 x (hb, wb, D)
    alike = np.ones((hb, wb), bool)
    for i in range(4):
        for j in range(i + 1, 4):
            alike &= np.einsum("yxd,yxd->yx", corners[i], corners[j]) >= threshold
    # a lumped token takes its block's first token's index, the others their own; then ids made dense
    index = np.arange(h * w).reshape(h, w)
    first = index[: 2 * hb : 2, : 2 * wb : 2].repeat(2, 0).repeat(2, 1)
    key = index.copy()
    key[: 2 * hb, : 2 * wb] = np.where(alike.repeat(2, 0).repeat(2, 1), first, index[: 2 * hb, : 2 * wb])
    return np.unique(key.ravel(), return_inverse=True)[1]


def oversegment(
    features: np.ndarray, settings: SpectralSettings, seed: int = 0, image: np.ndarray | None = None
) -> np.ndarray:
    """(h, w) int32 over-segment ids of one image's (D, h, w) features (steps 1-3); ids are dense 0..k-1."""
    d, h, w = features.shape
    tokens = features.reshape(d, -1).T
    k = min(settings.oversegments, h * w)
    if settings.embedding == "tokens":
        points = _unit(tokens - tokens.mean(0))
    else:
        unit = _centred_unit(tokens)  # once, for the graph and the blocks
        blocks = None if settings.lump is None else alike_blocks(unit, h, w, settings.lump)
        values, vectors = spectral_embedding(_affinity(unit, settings, image), k + 1, blocks)
        # each eigenvector weighted by 1 - λ (a diffusion map's step): the graph's structure keeps its weight
        # (λ near 0), while vectors of λ near 1, noise inside a uniform region, fade out
        points = vectors[:, 1 : k + 1] * (1 - values[1 : k + 1])
    labels = kmeans(
        points, k, seed=seed, niter=settings.niter, nredo=settings.nredo, threads=1, warn_few_points=False
    ).labels
    return np.unique(labels, return_inverse=True)[1].reshape(h, w).astype(np.int32)


def segment_sums(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per segment of ``labels`` (h, w): the sum of its tokens' (D, h, w) features (k, D) float64 and its
    token count (k,): what merging and the folder's vocabulary need, without the tokens."""
    k = int(labels.max()) + 1
    members = np.zeros((k, labels.size))
    members[labels.ravel(), np.arange(labels.size)] = 1.0
    return members @ features.reshape(len(features), -1).T.astype(np.float64), members.sum(1).astype(np.int64)


def _adjacency(labels: np.ndarray, k: int) -> np.ndarray:
    """(k, k) bool: segments that share a token edge (4-neighbourhood)."""
    adj = np.zeros((k, k), bool)
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        adj[a.ravel(), b.ravel()] = True
    adj |= adj.T
    np.fill_diagonal(adj, False)
    return adj


def merge_segments(
    labels: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    centre: np.ndarray,
    threshold: float,
    segments: int | None = None,
    min_tokens: int = 1,
) -> np.ndarray:
    """Step 4: a look-up table (k,) from the over-segments of ``labels`` to merged segments 0..m-1.

    The two adjacent segments whose mean features (``sums`` / ``counts``), centred on ``centre``,
    have the largest cosine are merged, again and again, while that cosine is at least ``threshold``,
    or, with ``segments``, until that many remain (then the threshold is not looked at). Then a
    segment of fewer than ``min_tokens`` tokens (a sliver of mixed tokens along an edge) joins its
    most similar neighbour. Only neighbours merge; a segment with no neighbour left stays apart.
    """
    k = len(counts)
    sums, counts = sums.astype(np.float64).copy(), counts.astype(np.float64).copy()
    adj = _adjacency(labels, k)
    owner = np.arange(k)
    alive = np.ones(k, bool)

    def join(i: int | np.integer, j: int | np.integer) -> None:  # segment indices, numpy's among them
        sums[i] += sums[j]
        counts[i] += counts[j]
        adj[i] |= adj[j]
        adj[:, i] |= adj[:, j]
        adj[i, i] = False
        adj[j], adj[:, j], alive[j] = False, False, False
        owner[owner == j] = i

    def similarity() -> np.ndarray:
        unit = _unit(sums / np.maximum(counts, 1)[:, None] - centre)
        return np.where(adj, unit @ unit.T, -np.inf)

    while alive.sum() > (segments or 1):
        sim = similarity()
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        if not np.isfinite(sim[i, j]) or (segments is None and sim[i, j] < threshold):
            break
        join(i, j)
    while alive.sum() > 1:
        small = np.flatnonzero(alive & (counts < min_tokens) & adj.any(1))
        if not len(small):
            break
        j = small[np.argmin(counts[small])]
        join(int(np.argmax(similarity()[j])), j)
    return np.unique(owner, return_inverse=True)[1]


def refine_segments(labels: np.ndarray, guide: torch.Tensor, settings: SpectralSettings) -> np.ndarray:
    """Step 5: (h, w) token segment ids -> (H, W) int64 ids on the guide's grid (guide (3, H, W), RGB in
    [0, 1]): the segments' soft masks, bilinear on the guided filter's fitting grid, filtered with
    the guide; each pixel takes the largest. Memory: the fitting grid and one block of output rows."""
    h, w = labels.shape
    k = int(labels.max()) + 1
    if k == 1:
        return np.zeros(tuple(guide.shape[-2:]), np.int64)
    low = fit_grid((h, w), guide.shape[-2:], settings.cells_per_token)
    masks = F.one_hot(torch.from_numpy(labels.astype(np.int64)), k).permute(2, 0, 1)[None].float()
    masks = F.interpolate(masks, size=low, mode="bilinear", align_corners=False)
    radius = max(1, round(settings.radius * max(low[0] / h, low[1] / w)))
    return fast_guided_filter(guide[None].float(), masks, radius, settings.eps, argmax=True, margin=settings.margin)[
        0
    ].numpy()


def background_segments(segmap: np.ndarray, k: int, ratio: float = 1.0) -> np.ndarray:
    """Step 6: (k,) bool, True for segments of ``segmap`` (H, W) whose share of the border pixels is at
    least ``ratio`` times their share of all pixels."""
    border = np.concatenate([segmap[0], segmap[-1], segmap[1:-1, 0], segmap[1:-1, -1]])
    border_share = np.bincount(border.ravel(), minlength=k) / border.size
    area_share = np.bincount(segmap.ravel(), minlength=k) / segmap.size
    return border_share >= ratio * np.maximum(area_share, 1e-12)
