"""A label-free rule for STEGO's three shifts: each one a quantile of its own pair type's F.

STEGO's loss attracts a pair's codes where the backbone similarity F exceeds the shift b
and repels them below it, so a shift is really a choice of *which fraction of pairs
attract*. The released shifts were tuned per dataset and backbone with labels; a new
backbone has another F scale (an EfficientNet's cosine similarities sit far lower than
DINO's), so numbers do not transfer but fractions can. The rule measures F exactly as
the loss does (same sampling, pointwise normalisation, kNN positives and negative
partners) on a sample of training batches and sets each shift to the ``1 - fraction``
quantile of its pair type, so that ``fraction`` of that type's pairs attract.

The default fractions (``unseg docs upsampling``, "STEGO shifts"): a pair should attract when
both positions likely show the same thing. Same image: about a third of random position
pairs of a street or indoor scene fall in the same segment (the sum of squared segment
areas), so 0.35; kNN image: similar scenes share fewer regions position for position,
0.25; random other image: STEGO's negatives exist to push apart, and the released
settings make the negative shift the largest of the three (COCO-Stuff's 1.0 repels every
negative pair), so only the most similar 5% attract. The correlation dropout of training
is not applied: the rule reads the features as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError
from ...features.cache import FeatureCache
from .loss import CorrespondenceConfig, feature_correlation, negative_partners, random_coords, sample_grid

__all__ = [
    "SHIFTS",
    "DEFAULT_ATTRACT",
    "AUTO",
    "pair_similarities",
    "shifts_from_similarities",
    "shifts_from_features",
    "auto_shifts",
    "resolve_shifts",
]

AUTO = "auto"
"""The value of a shift setting that asks this rule for it."""
SHIFTS = {"pos_intra": "pos_intra_shift", "pos_inter": "pos_inter_shift", "neg_inter": "neg_inter_shift"}
"""Pair type -> the :class:`~unseg.methods.stego.CorrespondenceConfig` field of its shift."""
SAMPLE_BATCH = 16
"""Images per sampled batch when the shifts are measured, and batches drawn (as training draws them)."""
SAMPLE_BATCHES = 8
NEIGHBORS = 7
"""A positive is drawn from the kNN neighbours 1..NEIGHBORS (STEGO's ``num_neighbors``)."""
DEFAULT_ATTRACT = {"pos_intra": 0.35, "pos_inter": 0.25, "neg_inter": 0.05}
"""Pair type -> the fraction of its pairs that attract (F > shift); the module docstring says why."""


def _feature_map(features: FeatureCache | np.ndarray | torch.Tensor, i: int) -> torch.Tensor:
    if isinstance(features, FeatureCache):
        return torch.from_numpy(features.features(i))
    return torch.as_tensor(np.asarray(features[i], dtype=np.float32))


@torch.no_grad()
def pair_similarities(
    features: FeatureCache | np.ndarray | torch.Tensor,
    knn: np.ndarray,
    cfg: CorrespondenceConfig | None = None,
    num_neighbors: int = NEIGHBORS,
    batch_size: int = SAMPLE_BATCH,
    num_batches: int = SAMPLE_BATCHES,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """F of every sampled pair, per pair type (keys of :data:`SHIFTS`), drawn as in training.

    ``features``: (N, D, h, w) maps or a cache; ``knn``: (N, k) table, column 0 the image
    itself; positives come from neighbours 1..``num_neighbors``. ``num_batches`` batches of
    ``batch_size`` distinct images (the batch matters: pointwise F subtracts batch means).
    Seeded, and the global RNG is left as it was.
    """
    cfg = cfg or CorrespondenceConfig()
    n = len(features)
    knn = np.asarray(knn)
    if knn.ndim != 2 or len(knn) != n or knn.shape[1] <= num_neighbors:
        raise ConfigError(f"kNN table of shape {knn.shape} does not fit {n} images with neighbours 1..{num_neighbors}")
    if n < 2:
        raise ConfigError(f"the shift rule needs at least 2 training images, got {n}")
    batch_size = min(batch_size, n)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in SHIFTS}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(num_batches):
            idx = torch.randperm(n)[:batch_size].tolist()
            pos = [int(knn[i, int(torch.randint(1, num_neighbors + 1, ()))]) for i in idx]
            feats = torch.stack([_feature_map(features, i) for i in idx])
            feats_pos = torch.stack([_feature_map(features, i) for i in pos])
            coords1 = random_coords(batch_size, cfg.feature_samples)
            coords2 = random_coords(batch_size, cfg.feature_samples)
            f1, f2 = sample_grid(feats, coords1), sample_grid(feats_pos, coords2)
            out["pos_intra"].append(feature_correlation(f1, f1, cfg.pointwise).flatten())
            out["pos_inter"].append(feature_correlation(f1, f2, cfg.pointwise).flatten())
            for _ in range(cfg.neg_samples):
                f_neg = sample_grid(feats[negative_partners(batch_size)], coords2)
                out["neg_inter"].append(feature_correlation(f1, f_neg, cfg.pointwise).flatten())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def _check_fractions(attract: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(attract) - set(SHIFTS))
    bad = {k: v for k, v in attract.items() if not 0 < v < 1}
    if unknown or bad:
        raise ConfigError(
            f"attract fractions must be keyed by {', '.join(SHIFTS)} with values in (0, 1); got {dict(attract)}"
        )
    return {**DEFAULT_ATTRACT, **attract}


def shifts_from_similarities(
    similarities: Mapping[str, np.ndarray], attract: Mapping[str, float] = DEFAULT_ATTRACT
) -> dict[str, float]:
    """Each shift (config key, e.g. ``pos_intra_shift``) = the ``1 - attract`` quantile of its pair type's F."""
    fractions = _check_fractions(attract)
    return {SHIFTS[k]: float(np.quantile(similarities[k], 1 - fractions[k])) for k in SHIFTS}


def shifts_from_features(
    features: FeatureCache | np.ndarray | torch.Tensor,
    knn: np.ndarray,
    cfg: CorrespondenceConfig | None = None,
    attract: Mapping[str, float] = DEFAULT_ATTRACT,
    num_neighbors: int = NEIGHBORS,
    batch_size: int = SAMPLE_BATCH,
    num_batches: int = SAMPLE_BATCHES,
    seed: int = 0,
) -> dict[str, float]:
    """The three shifts for which the promised fraction of each pair type attracts (F > shift):
    ``attract`` (default :data:`DEFAULT_ATTRACT`: intra 0.35, kNN 0.25, negatives 0.05).

    Returns ``{"pos_intra_shift": .., "pos_inter_shift": .., "neg_inter_shift": ..}``, ready
    for :class:`CorrespondenceConfig`. See :func:`pair_similarities` for the sampling.
    """
    sims = pair_similarities(features, knn, cfg, num_neighbors, batch_size, num_batches, seed)
    return shifts_from_similarities(sims, attract)


def auto_shifts(cfg: CorrespondenceConfig) -> list[str]:
    """Config keys of the shifts set to ``auto``."""
    return [key for key in SHIFTS.values() if getattr(cfg, key) == AUTO]


def resolve_shifts(
    cfg: CorrespondenceConfig,
    features: FeatureCache | np.ndarray | torch.Tensor,
    knn: np.ndarray,
    num_neighbors: int = NEIGHBORS,
    batch_size: int = SAMPLE_BATCH,
    seed: int = 0,
    attract: Mapping[str, float] = DEFAULT_ATTRACT,
) -> tuple[CorrespondenceConfig, dict[str, Any]]:
    """``cfg`` with every ``auto`` shift replaced by the rule's value, and a record of what was done
    (shifts, fractions, pairs measured); a config without ``auto`` comes back unchanged."""
    keys = auto_shifts(cfg)
    if not keys:
        return cfg, {}
    sims = pair_similarities(features, knn, cfg, num_neighbors, batch_size, seed=seed)
    shifts = shifts_from_similarities(sims, attract)
    fractions = _check_fractions(attract)
    record: dict[str, Any] = {
        "rule": "quantile of F per pair type",
        "auto": keys,
        "shifts": {k: shifts[k] for k in keys},
        "attract_fraction": {SHIFTS[k]: fractions[k] for k in SHIFTS if SHIFTS[k] in keys},
        "pairs": {SHIFTS[k]: int(v.size) for k, v in sims.items() if SHIFTS[k] in keys},
    }
    return replace(cfg, **record["shifts"]), record
