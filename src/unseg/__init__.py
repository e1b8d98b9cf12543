"""unseg: self-supervised dense representation learning and fully unsupervised semantic segmentation.

The package follows the data's path: ``backbones`` -> ``datasets`` -> ``features`` (their
cache, and ``Source.load_split``) -> ``clustering`` -> ``evaluation`` (metrics and scoring)
-> ``methods`` / ``unsupervised`` -> ``visualisation`` (and reports) -> ``protocols`` /
``segment`` (from names, or any model, to results). The names below are the Python API; the
``unseg`` command line is a thin layer over them.
"""

from .backbones import Backbone, ModuleBackbone, create_backbone, list_backbones
from .clustering import StandardPCA, greedy_match, hungarian_match, kmeans, match
from .datasets import SegmentationDataset, create_dataset, list_datasets
from .evaluation import ConfusionAccumulator, confusion_matrix, scores_from_confusion
from .evaluation.clustering import ClusteringResult, evaluate_clustering
from .evaluation.heads import FCNHead, LinearHead, evaluate_head, train_head
from .features import BackboneSettings, FeatureCache, Source, SplitData, extract_features, load_split
from .protocols import (
    clustering_protocol,
    evaluate,
    fully_unsupervised,
    head_protocol,
    retrieval_protocol,
    segments_protocol,
    stego_protocol,
)
from .segment import Segmentation, SegmentOptions, segment
from .unsupervised import SpectralSettings

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "ModuleBackbone",
    "create_backbone",
    "list_backbones",
    "SegmentationDataset",
    "create_dataset",
    "list_datasets",
    "FeatureCache",
    "extract_features",
    "SplitData",
    "load_split",
    "StandardPCA",
    "kmeans",
    "match",
    "hungarian_match",
    "greedy_match",
    "ConfusionAccumulator",
    "confusion_matrix",
    "scores_from_confusion",
    "ClusteringResult",
    "evaluate_clustering",
    "LinearHead",
    "FCNHead",
    "train_head",
    "evaluate_head",
    "BackboneSettings",
    "Source",
    "clustering_protocol",
    "segments_protocol",
    "stego_protocol",
    "head_protocol",
    "retrieval_protocol",
    "fully_unsupervised",
    "evaluate",
    "SegmentOptions",
    "Segmentation",
    "SpectralSettings",
    "segment",
]
