"""Community detection on the cluster co-occurrence graph (Leopart, ``unseg docs methods``).

Overclustering splits an object into many clusters; clusters of one object touch each
other in image after image. Counting which cluster ids sit next to which (grey-level
co-occurrence) gives a graph whose communities, found by Infomap, are the objects.

Facts carried over from the authors' ``fully_unsup_seg.py``:

- co-occurrence offsets follow skimage's ``graycomatrix`` rule, (row, col) =
  (round(sin a * d), round(cos a * d)) rounded half away from zero, for distances 1 and 2
  and 8 angles. We use the angles k * pi / 4; the authors' list has 4 pi / 3 where
  5 pi / 4 is evidently meant (it changes one of the 16 offsets, (-1, -1) -> (-2, -1) at
  distance 2);
- per image: counts summed over offsets, diagonal zeroed, rows normalised; summed over
  images and divided by the number of images in which the cluster has a neighbour;
- undirected edge i - j when both directions are >= the weight threshold, weight = the
  smaller; Infomap two-level, undirected, with a Markov time and a preferred number of
  modules, one run per seed;
- clusters in no edge share one extra "unlinked" label (the authors leave them at id 0,
  next to Infomap's 1-based modules).

Infomap >= 2 rejects seed 0: run ``s`` uses Infomap seed ``s + 1``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from functools import cached_property

import numpy as np
import torch

from ..clustering import kmeans
from ..defaults import NITER, NREDO
from ..errors import ConfigError
from ..evaluation.metrics import ConfusionAccumulator
from ..features.transforms import upsample_labels

__all__ = [
    "Overclustering",
    "cooccurrence_offsets",
    "cooccurrence",
    "cooccurrence_graph",
    "infomap_communities",
    "merge_confusion",
    "CD_KEYS",
    "PUBLISHED",
    "published_hyper_parameters",
    "check_hyper_parameters",
]

CD_KEYS = ("k", "markov_time", "weight_threshold")  # overclustering k, Infomap Markov time, edge threshold
PUBLISHED = {
    "dino_vits16": {"k": 149, "markov_time": 2.0, "weight_threshold": 0.09},
    "dino_vitb8": {"k": 109, "markov_time": 0.4, "weight_threshold": 0.07},
}
"""The CD hyper-parameters the authors found by TPE on VOC train, per backbone (``unseg docs methods``):
the "published" preset of the protocol and the defaults of ``unseg segment --method cd``."""


def published_hyper_parameters(backbone: object) -> dict[str, float]:
    """The authors' CD hyper-parameters for ``backbone`` (a registered name), or a ConfigError naming those known."""
    if not isinstance(backbone, str) or backbone not in PUBLISHED:
        shown = backbone if isinstance(backbone, str) else type(backbone).__name__
        raise ConfigError(
            f"no published CD hyper-parameters for backbone {shown!r} (published: "
            f"{', '.join(PUBLISHED)}); give --cd-k --markov-time --weight-threshold "
            "(hyper_parameters={...}) or leave them out to search"
        )
    return dict(PUBLISHED[backbone])


def check_hyper_parameters(hyper_parameters: dict[str, float]) -> dict[str, float]:
    """``hyper_parameters`` if it holds all of :data:`CD_KEYS`, else a ConfigError (before any clustering)."""
    missing = set(CD_KEYS) - set(hyper_parameters)
    if missing:
        raise ConfigError(
            f"CD hyper-parameters lack {', '.join(sorted(missing))}: give all of {', '.join(CD_KEYS)} "
            "(--cd-k --markov-time --weight-threshold) or none of them (TPE search)"
        )
    if (
        int(hyper_parameters["k"]) < 2
        or hyper_parameters["markov_time"] <= 0
        or hyper_parameters["weight_threshold"] < 0
    ):
        raise ConfigError(
            f"CD hyper-parameters k={hyper_parameters['k']}, markov_time={hyper_parameters['markov_time']}, "
            f"weight_threshold={hyper_parameters['weight_threshold']}: k must be >= 2 (clusters to "
            "merge), markov_time > 0, weight_threshold >= 0"
        )
    return hyper_parameters


Edge = tuple[int, int, float]


def cooccurrence_offsets(distances: tuple[int, ...] = (1, 2), num_angles: int = 8) -> list[tuple[int, int]]:
    """(row, col) offsets of skimage's ``graycomatrix`` for ``distances`` and angles k * 2 pi / num_angles."""

    def round_half_away(x: float) -> int:
        return int(np.sign(x) * np.floor(abs(x) + 0.5))

    angles = np.arange(num_angles) * 2 * np.pi / num_angles
    return [(round_half_away(np.sin(a) * d), round_half_away(np.cos(a) * d)) for d in distances for a in angles]


def _pair_counts(labels: np.ndarray, num_labels: int, offsets: list[tuple[int, int]]) -> np.ndarray:
    """(L, L) counts of (label at p, label at p + offset) over all in-image pixel pairs and offsets."""
    h, w = labels.shape
    counts = np.zeros(num_labels * num_labels, dtype=np.int64)
    for dr, dc in offsets:
        a = labels[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
        b = labels[max(0, dr) : h - max(0, -dr), max(0, dc) : w - max(0, -dc)]
        counts += np.bincount((a * num_labels + b).ravel(), minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def cooccurrence(
    maps: Iterable[np.ndarray], num_labels: int, offsets: list[tuple[int, int]] | None = None
) -> np.ndarray:
    """(L, L) co-occurrence of cluster ids over (H, W) maps (an (N, H, W) array or any iterable of maps)."""
    offsets = cooccurrence_offsets() if offsets is None else offsets
    total = np.zeros((num_labels, num_labels))
    images = np.zeros(num_labels)
    for labels in maps:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(f"cluster ids {labels.min()}..{labels.max()} are outside 0..{num_labels - 1}")
        counts = _pair_counts(labels, num_labels, offsets).astype(np.float64)
        np.fill_diagonal(counts, 0)
        rows = counts.sum(axis=1, keepdims=True)
        total += np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        images += rows[:, 0] > 0
    return np.divide(total, images[:, None], out=np.zeros_like(total), where=images[:, None] > 0)


def cooccurrence_graph(matrix: np.ndarray, weight_threshold: float) -> list[Edge]:
    """Undirected edges (i < j) where both directions reach ``weight_threshold``; weight = the smaller."""
    weights = np.minimum(matrix, matrix.T)
    rows, cols = np.nonzero(np.triu(weights >= weight_threshold, k=1))
    return [(int(i), int(j), float(weights[i, j])) for i, j in zip(rows, cols, strict=True)]


def infomap_communities(
    edges: list[Edge], num_nodes: int, markov_time: float, preferred_modules: int | None, seed: int
) -> np.ndarray:
    """(num_nodes,) community of every node, numbered 0.. in Infomap's module order; nodes in no
    edge share the label after the last community. ``seed`` s runs Infomap with seed s + 1."""
    import infomap

    labels = np.full(num_nodes, -1, dtype=np.int64)
    if edges:
        result = infomap.run(
            edges,
            seed=seed + 1,
            two_level=True,
            directed=False,
            markov_time=markov_time,
            options=infomap.Options(preferred_number_of_modules=preferred_modules or None),  # None: Infomap's own
        )
        modules = result.modules()
        index = {m: i for i, m in enumerate(sorted(set(modules.values())))}
        for node, module in modules.items():
            labels[node] = index[module]
    labels[labels < 0] = labels.max() + 1
    return labels


def merge_confusion(conf: np.ndarray, communities: np.ndarray) -> np.ndarray:
    """(C, L) class x cluster confusion -> (C, M) class x community: columns summed per community."""
    merge = np.zeros((len(communities), int(communities.max()) + 1), dtype=conf.dtype)
    merge[np.arange(len(communities)), communities] = 1
    return conf @ merge


class Overclustering:
    """CD's k-means on (foreground) tokens and their co-occurrence graph: everything that depends on k only.

    Background tokens (``foreground`` False) get id k and are a node of the graph, as in the
    authors' code. Maps are kept on the token grid and upsampled to ``mask_size`` on demand.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        grid: tuple[int, int],
        foreground: np.ndarray | None,
        k: int,
        mask_size: tuple[int, int],
        seed: int = 0,
        niter: int = NITER,
        nredo: int = NREDO,
    ) -> None:
        n = len(tokens) // (grid[0] * grid[1])
        keep = np.ones(len(tokens), bool) if foreground is None else foreground.reshape(-1)
        fit = kmeans(tokens[keep], k, seed=seed, niter=niter, nredo=nredo)
        labels = np.full(len(tokens), k, dtype=np.int64)
        labels[keep] = fit.labels
        self.k, self.centroids, self.mask_size = k, fit.centroids, mask_size
        self.variance = fit.inertia / max(1, int(keep.sum()) * tokens.shape[1])  # per-dimension, within clusters
        self.num_nodes = k if foreground is None else k + 1
        self.labels = labels.reshape(n, *grid)
        self._confusions: dict[tuple[int, int], np.ndarray] = {}

    @cached_property
    def matrix(self) -> np.ndarray:
        """(nodes, nodes) co-occurrence over every image's map at the mask size."""
        chunks = (self.maps(slice(i, i + 64)) for i in range(0, len(self.labels), 64))
        return cooccurrence(itertools.chain.from_iterable(chunks), self.num_nodes)

    def maps(self, images: slice) -> np.ndarray:
        """(n, H, W) cluster maps of ``images``, nearest-upsampled to the mask size."""
        return upsample_labels(torch.from_numpy(self.labels[images]), self.mask_size).numpy().astype(np.int16)

    def confusion(self, images: slice, masks: np.ndarray, num_classes: int) -> np.ndarray:
        """(C, nodes) class x cluster confusion of ``images`` against their ``masks`` (cached per slice)."""
        key = images.indices(len(self.labels))[:2]
        if key not in self._confusions:
            acc = ConfusionAccumulator(num_classes, self.num_nodes)
            acc.update(masks, self.maps(images))
            self._confusions[key] = acc.matrix
        return self._confusions[key]

    def communities(
        self, markov_time: float, weight_threshold: float, preferred_modules: int | None, seed: int
    ) -> np.ndarray:
        edges = cooccurrence_graph(self.matrix, weight_threshold)
        return infomap_communities(edges, self.num_nodes, markov_time, preferred_modules, seed)
