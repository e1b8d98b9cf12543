"""STEGO's feature-correspondence loss (SPEC §4).

The frozen backbone says which pairs of positions belong together: F, the cosine
similarity of their features, minus a shift b. The head's codes are pulled together
where F > b and pushed apart where F < b, through S, the cosine similarity of the codes:
``loss = -clamp(S, min=0) * (F - b)``. The clamp stops pushing once two codes are
orthogonal; anti-aligned codes cost nothing (negative pairs need not be opposite).

Pairs are drawn on an ``feature_samples`` x ``feature_samples`` grid of random
continuous positions per image (bilinear ``grid_sample``, border padding,
``align_corners=True``) between an image and itself (intra), its kNN positive (inter) and
other images of the batch (negatives: ``neg_samples`` derangements of the batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["CorrespondenceConfig", "CorrespondenceTerms", "correspondence_terms", "correspondence_term",
           "feature_correlation", "code_correlation", "sample_grid", "random_coords", "derangement"]


@dataclass
class CorrespondenceConfig:
    """Weights and shifts of the three pair types. Defaults: the authors' ``train_config.yml`` (ViT-S/8)."""

    pointwise: bool = True
    feature_samples: int = 11
    neg_samples: int = 5
    neg_inter_weight: float = 0.63
    pos_inter_weight: float = 0.25
    pos_intra_weight: float = 0.67
    neg_inter_shift: float = 0.46
    pos_inter_shift: float = 0.12
    pos_intra_shift: float = 0.18


@dataclass
class CorrespondenceTerms:
    """The three loss terms and the mean code similarity S of each pair type (for logging)."""

    intra: torch.Tensor
    inter: torch.Tensor
    neg: torch.Tensor
    intra_sim: torch.Tensor
    inter_sim: torch.Tensor
    neg_sim: torch.Tensor

    def total(self, cfg: CorrespondenceConfig) -> torch.Tensor:
        return (cfg.pos_inter_weight * self.inter + cfg.pos_intra_weight * self.intra
                + cfg.neg_inter_weight * self.neg)


def random_coords(batch: int, samples: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(batch, samples, samples, 2) uniform positions in [-1, 1] (grid_sample's frame)."""
    return torch.rand(batch, samples, samples, 2, device=device) * 2 - 1


def sample_grid(t: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) maps read bilinearly at (B, s, s, 2) positions -> (B, C, s, s)."""
    return F.grid_sample(t, coords.to(t.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def code_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C, s, s) x (B, C, t, t) -> (B, s, s, t, t) cosine similarities of every position pair."""
    return torch.einsum("bchw,bcij->bhwij", F.normalize(a, dim=1), F.normalize(b, dim=1))


@torch.no_grad()
def feature_correlation(f1: torch.Tensor, f2: torch.Tensor, pointwise: bool) -> torch.Tensor:
    """F: the backbone's cosine similarities (no gradient: the backbone is frozen).

    ``pointwise`` removes, for each position of the first image, its mean similarity to
    the second image's positions, then adds back the global mean: what counts is how
    much a pair stands out among that position's candidates.
    """
    fd = code_correlation(f1, f2)
    if pointwise:
        global_mean = fd.mean()
        fd = fd - fd.mean(dim=(3, 4), keepdim=True)
        fd = fd - fd.mean() + global_mean
    return fd


def correspondence_term(f1: torch.Tensor, f2: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, shift: float,
                        pointwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of -clamp(S, 0) * (F - shift), mean S) of sampled features f1, f2 and codes c1, c2."""
    fd = feature_correlation(f1, f2, pointwise)
    cd = code_correlation(c1, c2)
    return -(cd.clamp(min=0) * (fd - shift)).mean(), cd.detach().mean()


def derangement(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A random permutation of 0..n-1 with no fixed point: one cycle through a shuffled order."""
    if n < 2:
        raise ValueError(f"negative pairs need a batch of at least 2 images, got {n}")
    order = torch.randperm(n)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm.to(device)


def correspondence_terms(feats: torch.Tensor, feats_pos: torch.Tensor, code: torch.Tensor, code_pos: torch.Tensor,
                         cfg: CorrespondenceConfig) -> CorrespondenceTerms:
    """The intra, inter (kNN positive) and negative terms for a batch of feature maps and their codes.

    Negatives pair image b's samples with those of image perm[b], for ``neg_samples``
    derangements of the batch. The authors resample the permuted maps at the positives'
    coordinates instead; both draw the other image's positions uniformly and independently.
    """
    if cfg.neg_samples < 1:
        raise ValueError(f"neg_samples must be >= 1 (set neg_inter_weight=0 to drop negatives), got {cfg.neg_samples}")
    batch = feats.shape[0]
    coords1 = random_coords(batch, cfg.feature_samples, feats.device)
    coords2 = random_coords(batch, cfg.feature_samples, feats.device)
    f1, c1 = sample_grid(feats, coords1), sample_grid(code, coords1)
    f2, c2 = sample_grid(feats_pos, coords2), sample_grid(code_pos, coords2)
    intra, intra_sim = correspondence_term(f1, f1, c1, c1, cfg.pos_intra_shift, cfg.pointwise)
    inter, inter_sim = correspondence_term(f1, f2, c1, c2, cfg.pos_inter_shift, cfg.pointwise)
    negs = []
    for _ in range(cfg.neg_samples):
        perm = derangement(feats.shape[0], feats.device)
        negs.append(correspondence_term(f1, f1[perm], c1, c1[perm], cfg.neg_inter_shift, cfg.pointwise))
    neg, neg_sim = (torch.stack(v).mean() for v in zip(*negs))
    return CorrespondenceTerms(intra, inter, neg, intra_sim, inter_sim, neg_sim)
