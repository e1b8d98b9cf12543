"""STEGO's feature-correspondence loss (``unseg docs methods``, "Correspondence loss").

The frozen backbone says which pairs of positions belong together: F, the cosine
similarity of their features, minus a shift b. The head's codes are pulled together
where F > b and pushed apart where F < b, through S, the cosine similarity of the codes:
``loss = -clamp(S, min=0) * (F - b)``. The clamp stops pushing once two codes are
orthogonal; anti-aligned codes cost nothing (negative pairs need not be opposite).

Pairs are drawn on a ``feature_samples`` x ``feature_samples`` grid of random
continuous positions per image (bilinear ``grid_sample``, border padding,
``align_corners=True``) between an image and itself (intra), its kNN positive (inter) and
another image of the batch (negatives, ``neg_samples`` draws). As in the authors' code, an
image's samples are taken at a first set of positions and every partner's (positive or
negative) at a second set; see ``unseg docs evaluation`` for the negative-partner rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "CorrespondenceConfig",
    "CorrespondenceTerms",
    "correspondence_terms",
    "correspondence_term",
    "feature_correlation",
    "code_correlation",
    "sample_grid",
    "random_coords",
    "negative_partners",
]


@dataclass
class CorrespondenceConfig:
    """Weights and shifts of the three pair types. Defaults: the authors' ``train_config.yml`` (ViT-S/8).

    A shift may be ``"auto"``: training on cached features sets it from the features'
    similarity statistics (:mod:`unseg.methods.stego.shifts`, ``unseg docs upsampling``) before the first step.
    """

    pointwise: bool = True
    feature_samples: int = 11
    neg_samples: int = 5
    neg_inter_weight: float = 0.63
    pos_inter_weight: float = 0.25
    pos_intra_weight: float = 0.67
    neg_inter_shift: float | Literal["auto"] = 0.46
    pos_inter_shift: float | Literal["auto"] = 0.12
    pos_intra_shift: float | Literal["auto"] = 0.18


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
        return cfg.pos_inter_weight * self.inter + cfg.pos_intra_weight * self.intra + cfg.neg_inter_weight * self.neg


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


def correspondence_term(
    f1: torch.Tensor, f2: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, shift: float, pointwise: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of -clamp(S, 0) * (F - shift), mean S) of sampled features f1, f2 and codes c1, c2."""
    fd = feature_correlation(f1, f2, pointwise)
    cd = code_correlation(c1, c2)
    return -(cd.clamp(min=0) * (fd - shift)).mean(), cd.detach().mean()


def negative_partners(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Partner index of every image for one negative draw: the authors' rule, kept for fidelity.

    A random permutation whose fixed points are each moved to the next index (mod n): every
    image gets another image, but two images may share a partner (it is not always a
    permutation). Drawn with ``torch.randperm`` on ``device``, as the authors do.
    """
    if n < 2:
        raise ValueError(f"negative pairs need a batch of at least 2 images, got {n}")
    perm = torch.randperm(n, device=device)
    perm[perm == torch.arange(n, device=perm.device)] += 1
    return perm % n


def correspondence_terms(
    feats: torch.Tensor,
    feats_pos: torch.Tensor,
    code: torch.Tensor,
    code_pos: torch.Tensor,
    cfg: CorrespondenceConfig,
    coords: tuple[torch.Tensor, torch.Tensor] | None = None,
    partners: list[torch.Tensor] | None = None,
) -> CorrespondenceTerms:
    """The intra, inter (kNN positive) and negative terms for a batch of feature maps and their codes.

    ``feats`` / ``feats_pos`` are what the feature correlation F reads (during training the
    authors' dropped-out features, see :class:`~unseg.methods.stego.train.StegoModule`).
    Image b is sampled at ``coords[0][b]``; its positive, and the partner ``partners[i][b]``
    of each negative draw i, at ``coords[1][b]``. Both are drawn here unless given (tests
    inject them), in the authors' order: the two coordinate sets, then the partners.
    """
    if cfg.neg_samples < 1:
        raise ValueError(f"neg_samples must be >= 1 (set neg_inter_weight=0 to drop negatives), got {cfg.neg_samples}")
    auto = [k for k in ("pos_intra_shift", "pos_inter_shift", "neg_inter_shift") if getattr(cfg, k) == "auto"]
    if auto:
        raise ValueError(
            f"shift(s) {', '.join(auto)} are still 'auto': resolve them first "
            "(unseg.methods.stego.shifts.resolve_shifts)"
        )
    if partners is not None and len(partners) != cfg.neg_samples:
        raise ValueError(f"{len(partners)} partner draws given for neg_samples={cfg.neg_samples}")
    # numbers now: "auto" is refused above
    intra_shift, inter_shift, neg_shift = (
        float(cfg.pos_intra_shift),
        float(cfg.pos_inter_shift),
        float(cfg.neg_inter_shift),
    )
    batch = feats.shape[0]
    if coords is None:
        coords = (
            random_coords(batch, cfg.feature_samples, feats.device),
            random_coords(batch, cfg.feature_samples, feats.device),
        )
    coords1, coords2 = coords
    f1, c1 = sample_grid(feats, coords1), sample_grid(code, coords1)
    f2, c2 = sample_grid(feats_pos, coords2), sample_grid(code_pos, coords2)
    intra, intra_sim = correspondence_term(f1, f1, c1, c1, intra_shift, cfg.pointwise)
    inter, inter_sim = correspondence_term(f1, f2, c1, c2, inter_shift, cfg.pointwise)
    negs = []
    for i in range(cfg.neg_samples):
        perm = partners[i] if partners is not None else negative_partners(batch, feats.device)
        f_neg, c_neg = sample_grid(feats[perm], coords2), sample_grid(code[perm], coords2)
        negs.append(correspondence_term(f1, f_neg, c1, c_neg, neg_shift, cfg.pointwise))
    neg, neg_sim = (torch.stack(v).mean() for v in zip(*negs, strict=True))
    return CorrespondenceTerms(intra, inter, neg, intra_sim, inter_sim, neg_sim)
