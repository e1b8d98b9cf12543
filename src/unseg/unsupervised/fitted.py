"""Segmenters fitted on one set of images and applied to others: ``unseg segment``'s clustering file.

A fitted segmenter is what turns backbone tokens into segment ids: the standardise + PCA
projection and k-means centroids, and for community detection also CBFE's spherical
centroids with their foreground flags and each cluster's community. It only makes sense
with the backbone weights and input size it was fitted on, so it records both and
refuses others. The file is a numpy ``.npz`` (no pickles), written atomically.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import log_softmax

from ..clustering import StandardPCA, assign, kmeans
from ..defaults import MASK_SIZE, NITER, NREDO, PCA_DIM
from ..errors import WeightsError
from ..evaluation.clustering import fit_projection
from ..features.cache import FeatureCache
from ..features.upsample import Upsampling
from ..io import atomic_path
from .cbfe import DEFAULT_FG_K, cluster_precisions, saliency_clusters
from .community import PUBLISHED, Overclustering

__all__ = ["FittedSegmenter", "CDSettings", "fit_kmeans", "fit_cd", "FORMAT"]

FORMAT = "unseg-clustering-1"


@dataclass
class CDSettings:
    """Community detection on users' images. Defaults: the authors' ViT-S/16 hyper-parameters
    (``unseg docs methods``). ``fg_threshold`` None skips CBFE (every token is clustered); a value, e.g. one
    found by ``fully_unsupervised`` on a labelled dataset, keeps clusters at least that precise."""

    k: int = int(PUBLISHED["dino_vits16"]["k"])
    markov_time: float = PUBLISHED["dino_vits16"]["markov_time"]
    weight_threshold: float = PUBLISHED["dino_vits16"]["weight_threshold"]
    fg_threshold: float | None = None
    fg_k: int = DEFAULT_FG_K
    mask_size: int = MASK_SIZE


@dataclass
class FittedSegmenter:
    """k-means or CD fitted on some images' tokens: the segmenter interface ``unseg.segment`` applies
    (``num_labels``, ``segment_features``), as is :class:`unseg.methods.stego.StegoSegmenter`."""

    method: str  # "kmeans" or "cd"
    backbone: str
    weights: str  # unseg.features.extract.weights_fingerprint of the backbone
    input_size: tuple[int, int]
    pca: StandardPCA
    centroids: np.ndarray  # (k, d) euclidean centroids in PCA space
    variance: float  # within-cluster variance per dimension: the scale of the posteriors
    communities: np.ndarray | None = None  # cd: segment of each cluster, then of the background id
    fg_centroids: np.ndarray | None = None  # cd with CBFE: spherical centroids
    fg_clusters: np.ndarray | None = None  # cd with CBFE: which spherical clusters are foreground
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.centroids) if self.communities is None else int(self.communities.max()) + 1

    def _nodes(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nearest euclidean cluster, foreground flag) of PCA tokens."""
        fg = np.ones(len(z), bool)
        if self.fg_centroids is not None:
            assert self.fg_clusters is not None  # saved with fg_centroids
            fg = self.fg_clusters[assign(z, self.fg_centroids, spherical=True)]
        return assign(z, self.centroids), fg

    def labels(self, tokens: np.ndarray) -> np.ndarray:
        """(n,) segment id of each (n, D) backbone token."""
        return self._labels(self.pca.transform(tokens))

    def _labels(self, z: np.ndarray) -> np.ndarray:
        nodes, fg = self._nodes(z)
        if self.communities is None:
            return nodes
        nodes[~fg] = len(self.centroids)
        return self.communities[nodes]

    def log_probabilities(self, tokens: np.ndarray) -> np.ndarray:
        """(n, num_labels) log posteriors (a Gaussian mixture on the centroids with the shared
        ``variance``; a community sums its clusters'): the unary a dense CRF refines."""
        return self._log_probabilities(self.pca.transform(tokens))

    def _log_probabilities(self, z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64)
        c = self.centroids.astype(np.float64)
        d2 = (z**2).sum(1, keepdims=True) - 2 * z @ c.T + (c**2).sum(1)
        logp = log_softmax(-d2 / (2 * self.variance), axis=1)
        if self.communities is None:
            return logp.astype(np.float32)
        _, fg = self._nodes(z.astype(np.float32))
        probs = np.zeros((len(z), len(self.communities)))
        probs[fg, : len(c)] = np.exp(logp[fg])
        if self.fg_centroids is not None:
            probs[~fg, len(c)] = 1  # background tokens are the background node's, with certainty
        merged = np.zeros((len(self.communities), self.num_labels))
        merged[np.arange(len(self.communities)), self.communities] = 1
        return np.log(probs @ merged + 1e-8).astype(np.float32)

    def segment_features(
        self,
        features: np.ndarray,
        size: tuple[int, int],
        upsample: Upsampling,
        guide: torch.Tensor | None = None,
        with_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One image's (D, h, w) features -> segment ids on the token grid, or with an active ``upsample``
        on its target grid (default ``size``, the input size; ``guide``: the image there), and with
        ``with_logits`` the (segments, ., .) log-probabilities on the same grid (for a dense CRF)."""
        # project first: both upsamplers average with weights summing to one, so they commute with the
        # affine standardise + PCA, and the upsampled map is pca_dim deep instead of D
        z = self.pca.transform(features.reshape(len(features), -1).T).T.reshape(-1, *features.shape[1:])
        if upsample.active:
            z = upsample.apply(
                torch.from_numpy(np.ascontiguousarray(z)), upsample.target(z.shape[1:], size), guide
            ).numpy()
        grid = z.shape[1:]
        z = np.ascontiguousarray(z.reshape(len(z), -1).T, dtype=np.float32)
        labels = self._labels(z).reshape(grid)
        logits = self._log_probabilities(z).T.reshape(-1, *grid) if with_logits else None
        return labels, logits

    def check(self, backbone: str, weights: str, input_size: tuple[int, int], path: str | Path) -> None:
        """Fail, naming both, unless this segmenter was fitted on the same backbone, weights and input size."""
        ours = (self.backbone, self.weights, tuple(self.input_size))
        if ours != (backbone, weights, tuple(input_size)):
            raise WeightsError(
                f"clustering {path} was fitted with backbone {self.backbone} (weights {self.weights}) at input "
                f"{self.input_size[0]}x{self.input_size[1]}; this run uses backbone {backbone} (weights {weights}) "
                f"at input {input_size[0]}x{input_size[1]}. Fit a new one, or run with the backbone and weights "
                "it was fitted with"
            )

    def save(self, path: str | Path) -> Path:
        arrays: dict[str, Any] = {"pca_mean": self.pca.mean_, "pca_scale": self.pca.scale_, "centroids": self.centroids}
        if self.pca.components_ is not None:
            arrays["pca_components"] = self.pca.components_
        for name in ("communities", "fg_centroids", "fg_clusters"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        meta = {
            "format": FORMAT,
            "method": self.method,
            "backbone": self.backbone,
            "weights": self.weights,
            "input_size": list(self.input_size),
            "pca_dim": self.pca.dim,
            "variance": self.variance,
            "settings": self.settings,
        }
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FittedSegmenter:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            meta = json.loads(str(arrays.pop("meta")))
        except FileNotFoundError:
            raise WeightsError(f"clustering file {path} does not exist") from None
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsError(f"{path} is not a clustering saved by unseg segment ({exc})") from None
        if meta.get("format") != FORMAT:
            raise WeightsError(
                f"{path} is not a clustering saved by unseg segment (format {meta.get('format')!r}, "
                f"expected {FORMAT!r})"
            )
        pca = StandardPCA(meta["pca_dim"])
        pca.mean_, pca.scale_ = arrays.pop("pca_mean"), arrays.pop("pca_scale")
        pca.components_ = arrays.pop("pca_components", None)
        return cls(
            meta["method"],
            meta["backbone"],
            meta["weights"],
            tuple(meta["input_size"]),
            pca,
            arrays.pop("centroids"),
            meta["variance"],
            settings=meta["settings"],
            **arrays,
        )


def fit_kmeans(
    cache: FeatureCache,
    k: int,
    seed: int = 0,
    pca_dim: int | None = PCA_DIM,
    niter: int = NITER,
    nredo: int = NREDO,
    **identity: Any,
) -> FittedSegmenter:
    """Standardise + PCA + k-means on every cached token. ``identity``: backbone, weights, input_size."""
    pca, z = fit_projection([cache], pca_dim, keep_bytes=math.inf)  # float64 fit, in memory
    fit = kmeans(z, k, seed=seed, niter=niter, nredo=nredo)
    variance = fit.inertia / (len(z) * z.shape[1])
    return FittedSegmenter(
        "kmeans",
        pca=pca,
        centroids=fit.centroids,
        variance=variance,
        settings={"k": k, "seed": seed, "pca_dim": pca_dim, "niter": niter, "nredo": nredo},
        **identity,
    )


def fit_cd(
    cache: FeatureCache,
    num_segments: int,
    cd: CDSettings,
    seed: int = 0,
    pca_dim: int | None = PCA_DIM,
    niter: int = NITER,
    nredo: int = NREDO,
    **identity: Any,
) -> FittedSegmenter:
    """CBFE (when ``cd.fg_threshold`` is set) + overclustering + Infomap communities on the cached images,
    preferring ``num_segments`` communities; Infomap seed ``seed + 1``."""
    pca, z = fit_projection([cache], pca_dim, keep_bytes=math.inf)  # float64 fit, in memory
    grid = cache.grid
    fg_centroids = fg_clusters = foreground = None
    if cd.fg_threshold is not None:
        fit, clusters, noisy = saliency_clusters(z, grid, cache.saliency_array(), cd.fg_k, seed, niter, nredo)
        fg_centroids = fit.centroids
        fg_clusters = cluster_precisions(clusters, noisy, cd.fg_k) >= cd.fg_threshold
        foreground = fg_clusters[clusters]
    over = Overclustering(z, grid, foreground, cd.k, (cd.mask_size, cd.mask_size), seed, niter, nredo)
    communities = over.communities(cd.markov_time, cd.weight_threshold, num_segments, seed)
    settings = {
        **vars(cd),
        "num_segments": num_segments,
        "seed": seed,
        "infomap_seed": seed + 1,
        "pca_dim": pca_dim,
        "niter": niter,
        "nredo": nredo,
    }
    return FittedSegmenter(
        "cd",
        pca=pca,
        centroids=over.centroids,
        variance=over.variance,
        communities=communities,
        fg_centroids=fg_centroids,
        fg_clusters=fg_clusters,
        settings=settings,
        **identity,
    )
