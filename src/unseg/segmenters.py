"""Every way unseg segments a folder's images without labels, behind one interface, by name.

A segmenting method is fitted on the folder's cached features and then renders one image at a
time at that image's own size (:class:`FolderSegmenter`): each image gets its own segments, the
group (folder-wide label) of each segment, and which segments are background. ``unseg segment``
and the per-image evaluation protocol look methods up in :data:`SEGMENTERS`:

- ``spectral``: each image segmented on its own from its features and pixels, segments grouped
  into one vocabulary across the folder (:mod:`unseg.unsupervised.spectral`, ``unseg docs photos``);
- ``kmeans``: standardise + PCA + k-means on all the folder's tokens (segments are the clusters);
- ``cd``: community detection on an overclustering of the tokens, optionally after foreground
  extraction (``unseg docs methods``);
- ``stego``: a trained STEGO head and its cluster probe (a checkpoint).

The background of the clustering methods comes from the same border rule as the spectral one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image

from .errors import SettingError
from .features import FeatureCache, upsample_labels
from .features.upsample import Upsampling, guide_tensor
from .registry import Registry
from .threads import one_torch_thread, parallel_map
from .unsupervised.fitted import fit_cd, fit_kmeans
from .unsupervised.per_image import FolderPlan, ImageSegmentation, plan_folder
from .unsupervised.spectral import background_segments

__all__ = ["FolderSegmenter", "Segmenter", "SegmenterSpec", "SEGMENTERS", "SpectralSegmenter", "ClusterSegmenter",
           "FitContext", "DEFAULT_SEGMENTER", "DEFAULT_K", "render_each"]

DEFAULT_SEGMENTER = "spectral"  # the best measured on CamVid's per-image and dataset-level protocols
DEFAULT_K = 8  # clusters of the folder-level methods (kmeans, cd's preferred communities)


class Segmenter(Protocol):
    """What turns one image's features into folder-wide ids: a fitted k-means / CD clustering
    (:class:`unseg.unsupervised.FittedSegmenter`) or a STEGO checkpoint
    (:class:`unseg.methods.stego.StegoSegmenter`)."""

    @property
    def num_labels(self) -> int: ...

    def segment_features(self, features: np.ndarray, size: tuple[int, int], upsample: Upsampling,
                         guide: torch.Tensor | None = None, with_logits: bool = False
                         ) -> tuple[np.ndarray, np.ndarray | None]: ...


class FolderSegmenter(Protocol):
    """A method fitted on a folder: renders its images one at a time (side by side: each call on one thread)."""

    num_groups: int

    def render(self, index: int, features: np.ndarray, image: Image.Image) -> ImageSegmentation:
        """Image ``index`` of the folder (its cached (D, h, w) ``features`` and the decoded ``image``) at its
        own size."""
        ...

    def describe(self) -> dict[str, Any]:
        """The settings and what the fit found, for the printed summary and reports."""
        ...


@dataclass
class FitContext:
    """What every method may use when fitted on a folder: its cached features, the backbone's
    identity (recorded in saved clusterings), the input size, the seed, the threads, and a
    segmenter fitted before (then applied as it is)."""

    cache: FeatureCache
    identity: dict[str, Any]
    input_size: tuple[int, int]
    seed: int = 0
    threads: int | None = None
    fitted: Segmenter | None = None  # already fitted: a saved clustering, or a STEGO checkpoint's head and probe


@dataclass
class SpectralSegmenter:
    """The per-image spectral method with its folder vocabulary (:func:`unseg.unsupervised.plan_folder`)."""

    plan: FolderPlan

    @property
    def num_groups(self) -> int:
        return self.plan.num_groups

    def render(self, index: int, features: np.ndarray, image: Image.Image) -> ImageSegmentation:
        return self.plan.render(index, guide_tensor(image, (image.size[1], image.size[0])))

    def describe(self) -> dict[str, Any]:
        return {"method": "spectral", **self.plan.summary}


@dataclass
class ClusterSegmenter:
    """A folder-level segmenter (k-means, CD, STEGO): its ids are both an image's segments and their
    groups; read at the input size (with ``upsample``), then nearest-resized to the image, or
    refined there by a dense CRF (``crf``)."""

    segmenter: Segmenter
    input_size: tuple[int, int]
    upsample: Upsampling
    crf: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        return self.segmenter.num_labels

    def render(self, index: int, features: np.ndarray, image: Image.Image) -> ImageSegmentation:
        target = self.upsample.target(features.shape[1:], self.input_size)
        guide = guide_tensor(image, target) if self.upsample.guided else None
        labels, logits = self.segmenter.segment_features(features, self.input_size, self.upsample, guide,
                                                         with_logits=self.crf)
        if self.crf:
            from .postprocess.crf import dense_crf

            labels = dense_crf(np.asarray(image), logits).argmax(0)
        else:
            labels = upsample_labels(torch.from_numpy(labels[None].astype(np.int64)),
                                     (image.size[1], image.size[0]))[0].numpy()
        k = self.num_groups
        return ImageSegmentation(labels, np.arange(k), background_segments(labels, k))

    def describe(self) -> dict[str, Any]:
        return {**self.settings, "upsample": self.upsample.describe(), "crf": self.crf}


T = TypeVar("T")


def render_each(folder: FolderSegmenter, cache: FeatureCache, load: Callable[[int], Image.Image],
                use: Callable[[int, Image.Image, ImageSegmentation], T], threads: int | None = None) -> list[T]:
    """``[use(i, image, folder.render(i, features, image))]`` for every cached image ``i`` (``load(i)``
    decodes it): images side by side on the thread policy's threads, each job on one torch thread,
    so memory holds only the images in flight and what ``use`` returns."""
    def job(i: int) -> T:
        image = load(i)
        return use(i, image, folder.render(i, cache.features(i), image))

    with one_torch_thread():
        return parallel_map(job, range(len(cache)), threads, per_job=1)


@dataclass(frozen=True)
class SegmenterSpec:
    """A segmenting method: its name, what it does, and how it is fitted on a folder from the
    options of :class:`unseg.segment.SegmentOptions` (``fit(context, options)``)."""

    name: str
    summary: str
    fit: Callable[[FitContext, Any], FolderSegmenter]


def _fit_spectral(ctx: FitContext, o: Any) -> FolderSegmenter:
    return SpectralSegmenter(plan_folder(ctx.cache, o.spectral, o.groups, seed=ctx.seed, threads=ctx.threads))


def _clusters(fitted: Segmenter, ctx: FitContext, o: Any, settings: dict[str, Any]) -> ClusterSegmenter:
    return ClusterSegmenter(fitted, ctx.input_size, o.upsample, o.crf, settings)


def _fit_kmeans(ctx: FitContext, o: Any) -> FolderSegmenter:
    fitted = ctx.fitted or fit_kmeans(ctx.cache, o.k or DEFAULT_K, seed=ctx.seed, niter=o.niter, nredo=o.nredo,
                                    **ctx.identity)
    return _clusters(fitted, ctx, o, {"method": "kmeans", **getattr(fitted, "settings", {})})


def _fit_cd(ctx: FitContext, o: Any) -> FolderSegmenter:
    fitted = ctx.fitted or fit_cd(ctx.cache, o.k or DEFAULT_K, o.cd, seed=ctx.seed, niter=o.niter, nredo=o.nredo,
                                **ctx.identity)
    return _clusters(fitted, ctx, o, {"method": "cd", **getattr(fitted, "settings", {})})


def _fit_stego(ctx: FitContext, o: Any) -> FolderSegmenter:
    if ctx.fitted is None:
        raise SettingError("method 'stego' needs checkpoint=<a STEGO .ckpt> (its head and cluster probe)")
    return _clusters(ctx.fitted, ctx, o, {"method": "stego", "checkpoint": str(o.checkpoint)})


SEGMENTERS: Registry[SegmenterSpec] = Registry("segmenting method")
"""Every segmenting method by name: spectral, kmeans, cd, stego."""
for _spec in (
        SegmenterSpec("spectral", "each image segmented on its own (spectral, from its features and pixels); "
                                  "segments grouped into one vocabulary across the folder", _fit_spectral),
        SegmenterSpec("kmeans", "k-means on all the folder's tokens: segments are the clusters", _fit_kmeans),
        SegmenterSpec("cd", "community detection on an overclustering of the folder's tokens", _fit_cd),
        SegmenterSpec("stego", "a trained STEGO head and its cluster probe (checkpoint)", _fit_stego)):
    SEGMENTERS.add(_spec.name, _spec)
