"""STEGO's label-free shift rule gives the fractions of attracting pairs it promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unseg.config import config_from_dict
from unseg.errors import ConfigError
from unseg.methods.stego import CorrespondenceConfig, correspondence_terms
from unseg.methods.stego.shifts import (
    DEFAULT_ATTRACT,
    SHIFTS,
    pair_similarities,
    resolve_shifts,
    shifts_from_features,
    shifts_from_similarities,
)
from unseg.methods.stego.train import StegoConfig


def synthetic_features(n: int = 40, dim: int = 24, grid: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images made of a few regions, each a noisy copy of one of 6 prototypes; kNN = images sharing prototypes."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(6, dim))
    feats = np.empty((n, dim, grid, grid), np.float32)
    used = np.zeros((n, 6))
    for i in range(n):
        kinds = rng.choice(6, size=3, replace=False)
        used[i, kinds] = 1
        region = (np.arange(grid)[:, None] * 3 // grid + rng.integers(0, 2, (1, grid))).clip(0, 2)
        feats[i] = (protos[kinds][region] + 0.8 * rng.normal(size=(grid, grid, dim))).transpose(2, 0, 1)
    sim = used @ used.T + rng.random((n, n)) * 0.1
    np.fill_diagonal(sim, np.inf)
    knn = np.argsort(-sim, axis=1)[:, :10]
    return feats, knn


@pytest.mark.parametrize("pointwise", [True, False])
def test_shifts_give_the_promised_fractions(pointwise):
    feats, knn = synthetic_features()
    cfg = CorrespondenceConfig(pointwise=pointwise)
    attract = {"pos_intra": 0.4, "pos_inter": 0.2, "neg_inter": 0.05}
    shifts = shifts_from_features(feats, knn, cfg, attract, batch_size=8, num_batches=4, seed=0)
    assert set(shifts) == set(SHIFTS.values())
    # a fresh, independent draw of pairs: the fraction with F > shift is the promised one
    fresh = pair_similarities(feats, knn, cfg, batch_size=8, num_batches=6, seed=123)
    for kind, key in SHIFTS.items():
        frac = float((fresh[kind] > shifts[key]).mean())
        assert abs(frac - attract[kind]) < 0.03, (kind, frac)
    # the pair types differ (same-image pairs are the most similar), so one number could not serve all three
    assert np.median(fresh["pos_intra"]) > np.median(fresh["neg_inter"])


def test_similarities_are_the_losses_feature_correlation():
    """Plain re-computation, non-pointwise intra pairs: F is the cosine similarity of the sampled vectors."""
    feats, knn = synthetic_features(n=6, grid=4)
    cfg = CorrespondenceConfig(pointwise=False, feature_samples=3)
    sims = pair_similarities(feats, knn, cfg, num_neighbors=3, batch_size=2, num_batches=1, seed=5)["pos_intra"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        idx = torch.randperm(6)[:2].tolist()
        [torch.randint(1, 4, ()) for _ in idx]  # the positives' draws
        coords = torch.rand(2, 3, 3, 2) * 2 - 1
    x = torch.from_numpy(feats[idx])
    sampled = torch.nn.functional.grid_sample(x, coords, mode="bilinear", padding_mode="border", align_corners=True)
    v = torch.nn.functional.normalize(sampled.flatten(2), dim=1)  # (2, D, 9)
    expected = torch.einsum("bdi,bdj->bij", v, v).flatten().numpy()
    np.testing.assert_allclose(sims, expected, rtol=1e-5, atol=1e-6)


def test_quantile_rule_and_bad_fractions():
    rng = np.random.default_rng(0)
    sims = {k: rng.normal(size=20000) for k in SHIFTS}
    shifts = shifts_from_similarities(sims)
    for kind, key in SHIFTS.items():
        assert abs((sims[kind] > shifts[key]).mean() - DEFAULT_ATTRACT[kind]) < 1e-3
    with pytest.raises(ConfigError, match="values in \\(0, 1\\)"):
        shifts_from_similarities(sims, {"pos_intra": 1.5})
    with pytest.raises(ConfigError, match="keyed by"):
        shifts_from_similarities(sims, {"intra": 0.5})


def test_auto_in_the_config_is_resolved_and_required():
    cfg = config_from_dict(StegoConfig, {"loss": {"pos_intra_shift": "auto", "neg_inter_shift": "auto"}})
    assert cfg.loss.pos_intra_shift == "auto" and cfg.loss.pos_inter_shift == 0.12
    with pytest.raises(ConfigError, match="pos_inter_shift"):
        config_from_dict(StegoConfig, {"loss": {"pos_inter_shift": "tuned"}})
    feats, knn = synthetic_features()
    with pytest.raises(ValueError, match="still 'auto'"):
        t = torch.from_numpy(feats[:4])
        correspondence_terms(t, t, t, t, cfg.loss)
    resolved, record = resolve_shifts(cfg.loss, feats, knn, batch_size=8)
    assert isinstance(resolved.pos_intra_shift, float) and isinstance(resolved.neg_inter_shift, float)
    assert resolved.pos_inter_shift == 0.12  # a number stays as given
    assert record["auto"] == ["pos_intra_shift", "neg_inter_shift"]
    assert record["shifts"] == {
        "pos_intra_shift": resolved.pos_intra_shift,
        "neg_inter_shift": resolved.neg_inter_shift,
    }
    assert record["attract_fraction"] == {"pos_intra_shift": 0.35, "neg_inter_shift": 0.05}
    unchanged, empty = resolve_shifts(resolved, feats, knn)
    assert unchanged is resolved and empty == {}
