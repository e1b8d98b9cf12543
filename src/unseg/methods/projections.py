"""The STEGO study's baselines (``unseg docs methods``): fixed linear maps from backbone features to a code.

Each is a frozen 1x1 convolution, so it plugs in wherever a trained STEGO head does and
is scored by the same probes: ``raw`` (identity, "only DINO"), ``pca`` (StandardScaler +
PCA fitted on at most 5,000 training images) and ``random`` (Gaussian random projection,
entries N(0, 1/dim) as in scikit-learn's GaussianRandomProjection).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..clustering import StandardPCA
from ..features.cache import FeatureCache

PROJECTIONS = ("raw", "pca", "random")


def _tokens_of(cache: FeatureCache, indices: np.ndarray, batch: int = 64) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), batch):
        block = np.stack([cache.features(int(i)) for i in indices[start : start + batch]])
        yield block.transpose(0, 2, 3, 1).reshape(-1, block.shape[1])


def _frozen_conv(weight: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1)
    assert conv.bias is not None  # made with one
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight.astype(np.float32))[:, :, None, None])
        conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return conv.requires_grad_(False)


def projection_head(kind: str, cache: FeatureCache, dim: int, seed: int = 0, max_images: int = 5000) -> nn.Conv2d:
    """A frozen (D -> dim) 1x1 conv of baseline ``kind`` fitted on the cached training features."""
    d = cache.dim
    if kind == "raw":
        return _frozen_conv(np.eye(d), np.zeros(d))
    if not 1 <= dim <= d:
        raise ValueError(f"projection dim {dim} must lie in 1..{d} (the backbone's feature dim)")
    rng = np.random.default_rng(seed)
    if kind == "pca":
        n = len(cache)
        indices = np.sort(rng.choice(n, size=min(n, max_images), replace=False))
        pca = StandardPCA(dim).fit(_tokens_of(cache, indices))
        assert pca.mean_ is not None and pca.scale_ is not None  # fitted
        components = pca.components_ if pca.components_ is not None else np.eye(d)
        weight = components / pca.scale_[None, :]
        return _frozen_conv(weight, -weight @ pca.mean_)
    if kind == "random":
        return _frozen_conv(rng.normal(0.0, 1.0 / np.sqrt(dim), size=(dim, d)), np.zeros(dim))
    raise ValueError(f"projection {kind!r} is not one of {', '.join(PROJECTIONS)}")
