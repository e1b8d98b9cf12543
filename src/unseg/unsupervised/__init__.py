"""Fully unsupervised segmentation (Leopart, ``unseg docs methods``): cluster-based foreground extraction (``cbfe``),
community detection on the cluster co-occurrence graph (``community``), the evaluation pipeline with
its hyper-parameter search (``pipeline``; from names: :func:`unseg.protocols.fully_unsupervised`), fitted segmenters
that are saved and reused (``fitted``), and each photo segmented on its own (``spectral``) with one vocabulary of
segment groups across a folder (``per_image``; ``unseg docs photos``)."""

from .cbfe import ForegroundExtraction, ThresholdSearch, cluster_based_foreground, search_threshold
from .community import PUBLISHED, cooccurrence, cooccurrence_graph, infomap_communities, published_hyper_parameters
from .fitted import CDSettings, FittedSegmenter, fit_cd, fit_kmeans
from .per_image import FolderPlan, ImageSegmentation, fit_vocabulary, plan_folder
from .pipeline import FullyUnsupervisedResult, StageResult, fully_unsupervised_splits
from .spectral import SpectralSettings

__all__ = [
    "ForegroundExtraction",
    "ThresholdSearch",
    "cluster_based_foreground",
    "search_threshold",
    "cooccurrence",
    "cooccurrence_graph",
    "infomap_communities",
    "published_hyper_parameters",
    "CDSettings",
    "FittedSegmenter",
    "fit_cd",
    "fit_kmeans",
    "PUBLISHED",
    "FullyUnsupervisedResult",
    "StageResult",
    "fully_unsupervised_splits",
    "SpectralSettings",
    "FolderPlan",
    "ImageSegmentation",
    "fit_vocabulary",
    "plan_folder",
]
