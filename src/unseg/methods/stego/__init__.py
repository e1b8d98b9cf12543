"""STEGO (Hamilton et al., ICLR 2022; ``unseg docs methods``): a head trained on frozen features' correspondences.

``model`` (head and probes), ``loss`` (correspondence loss), ``train`` (config, Lightning
module, ``train_stego``), ``checkpoint`` (the authors' layout), ``evaluate`` (probes with
flip averaging), ``knn`` (positive pairs) and ``fivecrop`` (preprocessing).
"""

from .checkpoint import load_stego, save_stego
from .evaluate import StegoScores, evaluate_stego, stego_codes
from .loss import CorrespondenceConfig, CorrespondenceTerms, correspondence_terms, negative_partners
from .model import ClusterProbe, LinearProbe, StegoHead
from .segmenter import StegoSegmenter
from .train import CachedPairs, ImagePairs, StegoConfig, StegoModule, train_stego

__all__ = [
    "StegoHead",
    "ClusterProbe",
    "LinearProbe",
    "CorrespondenceConfig",
    "CorrespondenceTerms",
    "correspondence_terms",
    "negative_partners",
    "StegoConfig",
    "StegoModule",
    "CachedPairs",
    "ImagePairs",
    "train_stego",
    "save_stego",
    "load_stego",
    "stego_codes",
    "evaluate_stego",
    "StegoScores",
    "StegoSegmenter",
]
