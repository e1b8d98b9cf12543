"""Fully unsupervised segmentation (Leopart, SPEC §3): cluster-based foreground extraction (``cbfe``),
community detection on the cluster co-occurrence graph (``community``), the evaluation pipeline with
its hyper-parameter search (``pipeline``) and fitted segmenters that are saved and reused (``fitted``)."""
from .cbfe import ForegroundExtraction, ThresholdSearch, cluster_based_foreground, search_threshold
from .community import cooccurrence, cooccurrence_graph, infomap_communities
from .fitted import CDSettings, FittedSegmenter, fit_cd, fit_kmeans
from .pipeline import PUBLISHED, FullyUnsupervisedResult, StageResult, fully_unsupervised

__all__ = ["ForegroundExtraction", "ThresholdSearch", "cluster_based_foreground", "search_threshold", "cooccurrence", "cooccurrence_graph", "infomap_communities",
           "CDSettings", "FittedSegmenter", "fit_cd", "fit_kmeans",
           "PUBLISHED", "FullyUnsupervisedResult", "StageResult", "fully_unsupervised"]
