"""The study's baselines are the maps they claim to be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unseg.clustering import StandardPCA
from unseg.features.cache import FeatureCache, mark_complete, prepare_cache_dir, write_shard
from unseg.methods.projections import projection_head


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    feats = (rng.normal(size=(6, 16, 3, 4)) * np.linspace(0.5, 4, 16)[None, :, None, None] + 3).astype(np.float32)
    meta = {"num_shards": 2, "dim": 16, "grid": [3, 4], "input_size": [48, 64]}
    prepare_cache_dir(tmp_path, meta)
    for s in range(2):
        write_shard(
            tmp_path,
            s,
            feats[3 * s : 3 * s + 3],
            np.ones((3, 3, 4), np.float32) / 12,
            [f"i{3 * s + j}" for j in range(3)],
            [],
        )
    mark_complete(tmp_path, 2)
    return FeatureCache(tmp_path), feats


def apply(head, feats):
    with torch.no_grad():
        return head(torch.from_numpy(feats)).numpy()


def test_pca_head_equals_standard_pca_of_all_tokens(cache):
    c, feats = cache
    head = projection_head("pca", c, 5)
    tokens = feats.transpose(0, 2, 3, 1).reshape(-1, 16)
    expected = StandardPCA(5).fit([tokens]).transform(tokens).reshape(6, 3, 4, 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(apply(head, feats), expected, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in head.parameters())


def test_pca_on_a_subset_of_images_is_seeded(cache):
    c, feats = cache
    a, b = projection_head("pca", c, 4, seed=1, max_images=3), projection_head("pca", c, 4, seed=1, max_images=3)
    other = projection_head("pca", c, 4, seed=2, max_images=3)
    assert torch.equal(a.weight, b.weight) and not torch.allclose(a.weight, other.weight)


def test_raw_is_identity_and_random_is_seeded_gaussian(cache):
    c, feats = cache
    np.testing.assert_allclose(apply(projection_head("raw", c, 0), feats), feats, rtol=1e-6)
    r = projection_head("random", c, 8, seed=0).weight[:, :, 0, 0].numpy()
    assert r.shape == (8, 16) and abs(r.std() - 1 / np.sqrt(8)) < 0.1
    assert np.array_equal(r, projection_head("random", c, 8, seed=0).weight[:, :, 0, 0].numpy())
    with pytest.raises(ValueError, match="projection dim 17"):
        projection_head("pca", c, 17)
    with pytest.raises(ValueError, match="'umap'"):
        projection_head("umap", c, 4)
