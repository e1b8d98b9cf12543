"""Every method unseg runs, by name, behind one interface: how it segments a folder, how it trains.

A method (:class:`Method`) says what it is and, where it does them, how it segments a folder of
images without labels (``fit``) and how it trains (``train``). ``unseg segment`` and the
per-image protocol look the segmenting methods up in :data:`METHODS`, ``unseg train`` the
training ones; their options are the API's (:class:`unseg.segment.SegmentOptions`, each method's
config).

Segmenting: a method is fitted on the folder's cached features and then renders one image at a
time at that image's own size (:class:`FolderSegmenter`): each image gets its own segments, the
group (folder-wide label) of each segment, and which segments are background:

- ``spectral``: each image segmented on its own from its features and pixels, segments grouped
  into one vocabulary across the folder (:mod:`unseg.unsupervised.spectral`, ``unseg docs photos``);
- ``kmeans``: standardise + PCA + k-means on all the folder's tokens (segments are the clusters);
- ``cd``: community detection on an overclustering of the tokens, optionally after foreground
  extraction (``unseg docs methods``);
- ``stego``: a trained STEGO head and its cluster probe (a checkpoint).

The background of the clustering methods comes from the same border rule as the spectral one.
Training: ``stego`` (a segmentation head on a frozen backbone's cached features) and ``leopart``
(fine-tuning a backbone with dense self-supervision; it segments through the other methods, with
its weights), each from its config (``unseg configs``) into a run folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

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

__all__ = [
    "Method",
    "Training",
    "METHODS",
    "segmenting_methods",
    "training_methods",
    "segmenter",
    "training",
    "methods_table",
    "FolderSegmenter",
    "Segmenter",
    "SpectralSegmenter",
    "ClusterSegmenter",
    "FitContext",
    "DEFAULT_SEGMENTER",
    "DEFAULT_K",
    "render_each",
]

DEFAULT_SEGMENTER = "spectral"
"""The method `segment` runs when none is given: the best measured on CamVid's per-image and dataset-level protocols."""
DEFAULT_K = 8
"""Clusters of the folder-level methods (kmeans, cd's preferred communities) when no k is given."""


class Segmenter(Protocol):
    """What turns one image's features into folder-wide ids: a fitted k-means / CD clustering
    (:class:`unseg.unsupervised.FittedSegmenter`) or a STEGO checkpoint
    (:class:`unseg.methods.stego.StegoSegmenter`)."""

    @property
    def num_labels(self) -> int: ...

    def segment_features(
        self,
        features: np.ndarray,
        size: tuple[int, int],
        upsample: Upsampling,
        guide: torch.Tensor | None = None,
        with_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]: ...


class FolderSegmenter(Protocol):
    """A method fitted on a folder: renders its images one at a time (side by side: each call on one thread)."""

    @property
    def num_groups(self) -> int:
        """Folder-wide groups (labels) the segments fall into."""
        ...

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
        labels, logits = self.segmenter.segment_features(
            features, self.input_size, self.upsample, guide, with_logits=self.crf
        )
        if self.crf:
            from .postprocess.crf import dense_crf

            assert logits is not None  # asked for: with_logits
            labels = dense_crf(np.asarray(image), logits).argmax(0)
        else:
            labels = upsample_labels(torch.from_numpy(labels[None].astype(np.int64)), (image.size[1], image.size[0]))[
                0
            ].numpy()
        k = self.num_groups
        return ImageSegmentation(labels, np.arange(k), background_segments(labels, k))

    def describe(self) -> dict[str, Any]:
        return {**self.settings, "upsample": self.upsample.describe(), "crf": self.crf}


T = TypeVar("T")


def render_each(
    folder: FolderSegmenter,
    cache: FeatureCache,
    load: Callable[[int], Image.Image],
    use: Callable[[int, Image.Image, ImageSegmentation], T],
    threads: int | None = None,
) -> list[T]:
    """``[use(i, image, folder.render(i, features, image))]`` for every cached image ``i`` (``load(i)``
    decodes it): images side by side on the thread policy's threads, each job on one torch thread,
    so memory holds only the images in flight and what ``use`` returns."""

    def job(i: int) -> T:
        image = load(i)
        return use(i, image, folder.render(i, cache.features(i), image))

    with one_torch_thread():
        return parallel_map(job, range(len(cache)), threads, per_job=1)


@dataclass(frozen=True)
class Training:
    """How a method trains: its config class (a dataclass read by :func:`unseg.config.load_config`), the
    call that runs it (``run(cfg, out_dir, cache_dir, resume, overwrite, evaluate)``, returning what to tell
    the user, or None in the processes that are not the first of a multi-process run), the run folder's
    default, what the folder holds, and an example override for the help."""

    config: Callable[[], type]
    run: Callable[..., Any]
    out: str
    holds: str
    example: str


@dataclass(frozen=True)
class Method:
    """A method by name: what it does, how it segments a folder (``fit(context, options)`` ->
    :class:`FolderSegmenter`; None: it does not) and how it trains (None: it does not)."""

    name: str
    summary: str
    fit: Callable[[FitContext, Any], FolderSegmenter] | None = None
    train: Training | None = None


def _fit_spectral(ctx: FitContext, o: Any) -> FolderSegmenter:
    return SpectralSegmenter(plan_folder(ctx.cache, o.spectral, o.groups, seed=ctx.seed, threads=ctx.threads))


def _clusters(fitted: Segmenter, ctx: FitContext, o: Any, settings: dict[str, Any]) -> ClusterSegmenter:
    return ClusterSegmenter(fitted, ctx.input_size, o.upsample, o.crf, settings)


def _fit_kmeans(ctx: FitContext, o: Any) -> FolderSegmenter:
    fitted = ctx.fitted or fit_kmeans(
        ctx.cache, o.k or DEFAULT_K, seed=ctx.seed, niter=o.niter, nredo=o.nredo, **ctx.identity
    )
    return _clusters(fitted, ctx, o, {"method": "kmeans", **getattr(fitted, "settings", {})})


def _fit_cd(ctx: FitContext, o: Any) -> FolderSegmenter:
    fitted = ctx.fitted or fit_cd(
        ctx.cache, o.k or DEFAULT_K, o.cd, seed=ctx.seed, niter=o.niter, nredo=o.nredo, **ctx.identity
    )
    return _clusters(fitted, ctx, o, {"method": "cd", **getattr(fitted, "settings", {})})


def _fit_stego(ctx: FitContext, o: Any) -> FolderSegmenter:
    if ctx.fitted is None:
        raise SettingError("method 'stego' needs checkpoint=<a STEGO .ckpt> (its head and cluster probe)")
    return _clusters(ctx.fitted, ctx, o, {"method": "stego", "checkpoint": str(o.checkpoint)})


def _stego_config() -> type:
    from .methods.stego.train import StegoConfig

    return StegoConfig


def _train_stego(
    cfg: Any, out_dir: str, cache_dir: str | None, resume: str | None, overwrite: bool, evaluate: bool = True
) -> str:
    """Train, then (``evaluate``) score both probes on the config's val split."""
    from .methods.stego.pipeline import evaluate_run, fit_stego, split_data

    module = fit_stego(cfg, out_dir, cache_dir, resume=resume, overwrite=overwrite)
    text = f"STEGO head written to {Path(out_dir) / 'stego.ckpt'} (STEGO's checkpoint layout)"
    if evaluate:
        scores = evaluate_run(module, split_data(cfg, cfg.val_split, cache_dir), cfg.n_classes)
        text += f"\n{cfg.dataset}/{cfg.val_split} at {cfg.val_input_size}px, flip TTA: {scores.summary()}"
    return text


def _leopart_config() -> type:
    from .methods.leopart import LeopartConfig

    return LeopartConfig


def _train_leopart(
    cfg: Any, out_dir: str, cache_dir: str | None, resume: str | None, overwrite: bool, evaluate: bool = True
) -> str | None:
    """Train (Leopart validates during training when the config's ``val.root`` is set)."""
    from .methods.leopart import train_leopart

    module = train_leopart(cfg, out_dir, resume=resume, overwrite=overwrite)
    return (
        f"Leopart weights written to {Path(out_dir) / 'leopart.ckpt'} (Leopart's layout: --weights loads the "
        "student, as Leopart's evaluation does; --weights-role teacher the teacher)"
        if module.trainer.is_global_zero
        else None
    )


METHODS: Registry[Method] = Registry("method")
"""Every method by name: spectral, kmeans, cd, stego (segment); stego, leopart (train)."""
for _method in (
    Method(
        "spectral",
        "each image segmented on its own (spectral, from its features and pixels); segments "
        "grouped into one vocabulary across the folder",
        fit=_fit_spectral,
    ),
    Method("kmeans", "k-means on all the folder's tokens: segments are the clusters", fit=_fit_kmeans),
    Method("cd", "community detection on an overclustering of the folder's tokens", fit=_fit_cd),
    Method(
        "stego",
        "a STEGO head distilled from feature correspondences on a frozen backbone; segments with "
        "its cluster probe (checkpoint)",
        fit=_fit_stego,
        train=Training(
            _stego_config, _train_stego, "runs/stego", "config, logs, checkpoints, stego.ckpt", "root=DATA max_steps=N"
        ),
    ),
    Method(
        "leopart",
        "fine-tunes a backbone with dense self-supervision (Leopart's loss); its weights then "
        "serve every other method (--weights)",
        train=Training(
            _leopart_config,
            _train_leopart,
            "runs/leopart",
            "config, logs, checkpoints, leopart.ckpt",
            "root=DATA epochs=N",
        ),
    ),
):
    METHODS.add(_method.name, _method)


def segmenting_methods() -> list[str]:
    """Names of the methods that segment a folder."""
    return [n for n in METHODS.names() if METHODS.get(n).fit is not None]


def training_methods() -> list[str]:
    """Names of the methods that train."""
    return [n for n in METHODS.names() if METHODS.get(n).train is not None]


def segmenter(name: str) -> Callable[[FitContext, Any], FolderSegmenter]:
    """How method ``name`` segments a folder; a method that does not fails naming those that do."""
    fit = METHODS.get(name).fit
    if fit is None:
        raise SettingError(
            f"method {name!r} does not segment images; segmenting methods: {', '.join(segmenting_methods())}"
        )
    return fit


def training(name: str) -> Training:
    """How method ``name`` trains; a method that does not fails naming those that do."""
    train = METHODS.get(name).train
    if train is None:
        raise SettingError(f"method {name!r} does not train; training methods: {', '.join(training_methods())}")
    return train


def methods_table() -> str:
    """Every method, whether it segments and trains, and what it does, one line each (``unseg methods``)."""
    return "\n".join(
        f"{name:10s} {'/'.join(w for w, on in (('segment', m.fit), ('train', m.train)) if on):15s} {m.summary}"
        for name, m in ((n, METHODS.get(n)) for n in METHODS.names())
    )
