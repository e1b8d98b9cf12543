"""unseg: self-supervised dense representation learning and fully unsupervised semantic segmentation.

The package follows the data's path: ``backbones`` -> ``datasets`` -> ``features`` (and
their cache) -> ``clustering`` -> ``evaluation`` -> ``visualisation``. The names below
are the Python API; the ``unseg`` command line is a thin layer over them.
"""
from .backbones import Backbone, create_backbone, list_backbones
from .clustering import StandardPCA, greedy_match, hungarian_match, kmeans, match
from .datasets import SegmentationDataset, create_dataset, list_datasets
from .evaluation import ConfusionAccumulator, confusion_matrix, scores_from_confusion
from .evaluation.clustering import ClusteringResult, evaluate_clustering
from .evaluation.heads import FCNHead, LinearHead, evaluate_head, train_head
from .evaluation.protocols import Source, clustering_protocol, head_protocol
from .features import FeatureCache, extract_features
from .segment import segment
from .unsupervised import fully_unsupervised

__version__ = "0.1.0"

__all__ = [
    "Backbone", "create_backbone", "list_backbones",
    "SegmentationDataset", "create_dataset", "list_datasets",
    "FeatureCache", "extract_features",
    "StandardPCA", "kmeans", "match", "hungarian_match", "greedy_match",
    "ConfusionAccumulator", "confusion_matrix", "scores_from_confusion",
    "ClusteringResult", "evaluate_clustering", "LinearHead", "FCNHead", "train_head", "evaluate_head",
    "Source", "clustering_protocol", "head_protocol", "segment", "fully_unsupervised",
]
