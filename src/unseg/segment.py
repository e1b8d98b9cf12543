"""``segment``: fully unsupervised segmentation of a user's own images (no labels), as arrays and pictures.

Images of any size are resized to the backbone's square input; their segment maps come
back at each image's own size. Methods:

- ``kmeans``: standardise + PCA 50 + k-means (k segments) on the images' tokens;
- ``cd``: community detection (``unseg docs methods``) on an overclustering of the tokens, optionally
  after cluster-based foreground extraction; k is Infomap's preferred number of segments;
- ``stego``: a trained STEGO head and its cluster probe (``checkpoint``).

A fitted k-means / CD clustering can be saved and applied to new images; it records the
backbone, a fingerprint of its weights and the input size, and refuses any other.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from .backbones import DEFAULT_BACKBONE, create_backbone, views_name, with_views
from .backbones.views import DEFAULT_OVERLAP
from .datasets.base import IMAGE_EXTENSIONS, Sample, SegmentationDataset, read_image
from .errors import ImageError, LayoutError, SettingError, WeightsError
from .features import (DEFAULT_INPUT_SIZE, FeatureCache, as_size, load_split, resolve_device, upsample_labels,
                       weights_fingerprint)
from .features.source import check_views
from .features.upsample import Upsampling, guide_tensor
from .io import atomic_path, require_writable
from .kinds import COUNT, DEVICE, NON_NEGATIVE, SEED
from .unsupervised.fitted import CDSettings, FittedSegmenter, fit_cd, fit_kmeans
from .visualisation import overlay, palette
from .visualisation.gallery import GalleryItem, write_gallery

__all__ = ["METHODS", "DEFAULT_K", "SegmentOptions", "Segmenter", "segment", "collect_images",
           "write_segmentations"]

log = logging.getLogger(__name__)
METHODS = ("kmeans", "stego", "cd")
DEFAULT_K = 8


@dataclass(frozen=True)
class InputImage:
    id: str  # unique output name (the file stem, suffixed on clashes)
    path: Path
    size: tuple[int, int]  # (W, H)


def _image_files(folder: Path, skip_invalid: bool) -> list[Path]:
    """Image files of ``folder`` (not recursive; hidden files are not looked at). A file that is
    not an image by its extension fails naming it, or with ``skip_invalid`` is logged and left out."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if others and not skip_invalid:
        raise ImageError(f"folder {folder} holds files that are not images: {', '.join(others)} "
                         f"(images: {', '.join(IMAGE_EXTENSIONS)}); remove them or skip them (--skip-invalid)")
    for name in others:
        log.warning("skipping %s: not an image (extension)", folder / name)
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise LayoutError(f"folder {folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return images


def collect_images(paths: Iterable[str | Path], skip_invalid: bool = False) -> list[InputImage]:
    """Image files named by ``paths`` (files, or folders of images), each decoded once to check it.

    An unreadable or non-image file fails naming it, or with ``skip_invalid`` is logged by
    name and skipped; an empty folder or a missing path fails.
    """
    files: list[Path] = []
    for p in (Path(p).expanduser() for p in paths):
        if p.is_dir():
            try:
                files += _image_files(p, skip_invalid)
            except PermissionError as exc:
                raise LayoutError(f"folder {p} cannot be read ({exc.strerror})") from None
        elif p.is_file():
            files.append(p)
        else:
            raise LayoutError(f"{p} does not exist")
    images, names = [], set()
    for path in files:
        try:
            with read_image(path) as im:
                size = im.size
        except ImageError as exc:
            if not skip_invalid:
                raise
            log.warning("skipping %s", exc)
            continue
        name, n = path.stem, 1
        while name in names:
            n += 1
            name = f"{path.stem}-{n}"
        names.add(name)
        images.append(InputImage(name, path, size))
    if not images:
        raise ImageError(f"none of the {len(files)} file(s) given could be read as an image")
    return images


class Segmenter(Protocol):
    """What turns one image's features into segment ids: a fitted k-means / CD clustering
    (:class:`unseg.unsupervised.FittedSegmenter`) or a STEGO checkpoint
    (:class:`unseg.methods.stego.StegoSegmenter`)."""

    @property
    def num_labels(self) -> int: ...

    def segment_features(self, features: np.ndarray, size: tuple[int, int], upsample: Upsampling,
                         guide: torch.Tensor | None = None, with_logits: bool = False
                         ) -> tuple[np.ndarray, np.ndarray | None]: ...


def _coarse_labels(cache: FeatureCache, segmenter: Segmenter, size: tuple[int, int], crf: bool,
                   images: Sequence[InputImage] = (), upsample: Upsampling | None = None
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per image: segment ids on the token grid (STEGO: at the input size, as its evaluation) and,
    for a CRF, log-probabilities; with ``upsample`` on the upsampled grid (default the input size;
    guided: by the image ``images[i]``), one image at a time."""
    upsample = upsample or Upsampling()
    paths = {i.id: i.path for i in images}
    labels, logits = [], []
    for i in range(len(cache)):
        feats = cache.features(i)
        target = upsample.target(feats.shape[1:], size)
        guide = guide_tensor(read_image(paths[cache.ids[i]]), target) if upsample.guided else None
        lab, logp = segmenter.segment_features(feats, size, upsample, guide, with_logits=crf)
        labels.append(lab)
        if crf:
            logits.append(logp)
    return labels, logits


def _full_size(coarse: list[np.ndarray], logits: list[np.ndarray], images: Sequence[InputImage], dtype: type,
               processes: int | None) -> list[np.ndarray]:
    """Segment maps at each image's own size: nearest-upsampled, or the argmax of a dense CRF on the image."""
    if not logits:
        return [upsample_labels(torch.from_numpy(lab[None].astype(np.int64)), (im.size[1], im.size[0]))[0]
                .numpy().astype(dtype) for lab, im in zip(coarse, images)]
    from .postprocess import crf_batch

    labels = []
    for start in range(0, len(images), 16):  # bounded memory: 16 decoded images at a time
        chunk = images[start:start + 16]
        probs = crf_batch([np.array(read_image(i.path)) for i in chunk], logits[start:start + 16], processes)
        labels += [p.argmax(0).astype(dtype) for p in probs]
    return labels


def _label_dtype(num_labels: int) -> type:
    return np.uint8 if num_labels <= 256 else np.uint16


def write_segmentations(out_dir: str | Path, images: Sequence[InputImage], labels: Sequence[np.ndarray],
                        num_labels: int, title: str) -> Path:
    """``labels/<id>.png`` (segment ids), ``overlays/<id>.png`` and ``index.html`` under ``out_dir``.

    Label and overlay PNGs of an earlier run into the same folder that this run does not write
    are removed once its own are written, so the folder holds this run's images only.
    """
    out = Path(out_dir)
    colours = palette(num_labels)
    items = []
    for image, lab in zip(images, labels):
        label_path, overlay_path = out / "labels" / f"{image.id}.png", out / "overlays" / f"{image.id}.png"
        for path, picture in ((label_path, Image.fromarray(lab)),
                              (overlay_path, overlay(read_image(image.path), lab, colours))):
            with atomic_path(path) as tmp:
                picture.save(tmp, format="PNG")
        items.append(GalleryItem(overlay_path, image.id, f"{image.size[0]}x{image.size[1]}",
                                 {"labels": label_path}))
    written = {f"{image.id}.png" for image in images}
    for folder in (out / "labels", out / "overlays"):
        for stale in folder.glob("*.png"):
            if stale.name not in written:
                stale.unlink()
    legend = [(f"segment {i}", colours[i]) for i in range(num_labels)]
    return write_gallery(out / "index.html", {"": items}, title,
                         intro=f"{len(items)} images; label maps hold segment ids 0..{num_labels - 1}.",
                         legend=legend)


@dataclass
class SegmentOptions:
    """Everything :func:`segment` takes besides the images, each default defined here once.

    ``k``: segments (k-means clusters; CD's preferred number of communities; default 8).
    ``clustering``: a file from ``save_clustering`` to apply instead of fitting (same backbone,
    weights and input size, else an error naming both). ``checkpoint``: STEGO's. ``cd``: CD
    settings (default: the authors' ViT-S/16 values). ``out_dir``: also write label PNGs,
    overlays and an ``index.html`` gallery. ``crf``: refine with a dense CRF (extra
    ``unseg[crf]``). ``niter``, ``nredo``: faiss k-means iterations and restarts when fitting
    (the protocol's 100 and 5). ``trust_checkpoint``: unpickle ``weights`` / ``checkpoint``
    fully, which runs any code they hold (trusted files only). ``upsample``: segment upsampled
    features (``unseg docs upsampling``), e.g. ``Upsampling("guided")`` for masks that follow the
    image's edges at the input size (memory: one image's features at a time). ``window``,
    ``window_overlap``, ``scales``: see the backbone through a sliding window and/or several
    scales (``unseg docs upsampling``, "Large photos"; windows per forward pass: ``batch_size``);
    default the clustering's, else the whole input at scale 1.
    """

    method: str = "kmeans"
    backbone: str | None = None  # default: the clustering's or checkpoint's, else DEFAULT_BACKBONE
    weights: str | Path | None = None
    k: int | None = None
    out_dir: str | Path | None = None
    crf: bool = False
    clustering: str | Path | None = None
    save_clustering: str | Path | None = None
    checkpoint: str | Path | None = None
    input_size: int | Sequence[int] | None = None  # default: the clustering's, else DEFAULT_INPUT_SIZE
    window: int | Sequence[int] | None = None  # default: the clustering's, else none
    window_overlap: float | None = None  # default: the clustering's, else DEFAULT_OVERLAP
    scales: Sequence[float] | None = None  # default: the clustering's, else (1.0,)
    cd: CDSettings = field(default_factory=CDSettings)
    skip_invalid: bool = False
    seed: int = 0
    download: bool = False
    role: str = "auto"
    device: str = "auto"
    batch_size: int = 16
    num_workers: int = 2
    processes: int | None = None
    niter: int = 100
    nredo: int = 5
    trust_checkpoint: bool = False
    # guided upsampling to the input size: the best measured on CamVid (`unseg docs upsampling`)
    upsample: Upsampling = field(default_factory=lambda: Upsampling("guided"))

    def __post_init__(self) -> None:
        """Values checked when the options are made, before any image is read or backbone built."""
        if self.method not in METHODS:
            raise SettingError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise SettingError(f"k = {self.k} segments is not allowed; k must be at least 1 (default {DEFAULT_K})")
        check_views(self.input_size or DEFAULT_INPUT_SIZE, self.window,
                    DEFAULT_OVERLAP if self.window_overlap is None else self.window_overlap, self.scales or (1.0,))
        for name, kind in (("batch_size", COUNT), ("num_workers", NON_NEGATIVE), ("seed", SEED), ("niter", COUNT),
                           ("nredo", COUNT), ("device", DEVICE)):
            kind.check(getattr(self, name), name)
        if self.processes is not None:
            COUNT.check(self.processes, "processes")

    def describe(self) -> str:
        """What the run uses, in one line (the CLI prints it after the run, so a clustering file is valid)."""
        what = f"{self.method}" + (f" k={self.k}" if self.k is not None else "")
        up = "token labels" if not self.upsample.active else f"{self.upsample.method} upsampling to the input size"
        fitted = FittedSegmenter.load(self.clustering).settings.get("views", {}) if self.clustering else {}
        views = views_name(**_views(self, fitted))  # a reused clustering brings its own views
        return f"{what}{f', backbone view {views[1:]}' if views else ''}, {up}{', dense CRF' if self.crf else ''}"


def _views(o: SegmentOptions, fitted: dict[str, Any]) -> dict[str, Any]:
    """Window and scale settings: the options given, else a fitted clustering's (``fitted``), else none."""
    views = {"window": None, "window_overlap": DEFAULT_OVERLAP, "scales": (1.0,), **fitted}
    given = {k: getattr(o, k) for k in views if getattr(o, k) is not None}
    views.update(given)
    views["window"] = None if views["window"] is None else as_size(views["window"])
    views["scales"] = tuple(views["scales"])
    return views


def _check_views(fitted: FittedSegmenter, views: dict[str, Any], path: str | Path) -> None:
    """A clustering applies only to tokens seen the way it was fitted on (its ``views``; none in older files)."""
    theirs = views_name(**fitted.settings.get("views", {})) or "none"
    ours = views_name(**views) or "none"
    if theirs != ours:
        raise WeightsError(f"clustering {path} was fitted on backbone views {theirs.lstrip('-')}; this run uses "
                           f"{ours.lstrip('-')} (--window, --window-overlap, --scales). Fit a new one, or run with "
                           "the views it was fitted with")


def _stego_segmenter(o: SegmentOptions) -> tuple[Segmenter, SegmentOptions]:
    """The STEGO checkpoint's segmenter, with the backbone (and its weights, when the checkpoint holds
    them) it was trained on filled in where not given."""
    if o.checkpoint is None:
        raise ValueError("method 'stego' needs checkpoint=<a STEGO .ckpt> (its head and cluster probe)")
    if o.clustering is not None or o.save_clustering is not None:
        raise ValueError("method 'stego' is fitted already: its checkpoint is the model; "
                         "clustering / save_clustering are for kmeans and cd")
    from .methods.stego import StegoSegmenter, load_stego

    head, probe, _, meta = load_stego(o.checkpoint, trust_checkpoint=o.trust_checkpoint)
    if o.k is not None and o.k != probe.n_clusters:
        raise ValueError(f"STEGO checkpoint {o.checkpoint} has {probe.n_clusters} clusters, not k={o.k}")
    return StegoSegmenter(head, probe, resolve_device(o.device)), replace(
        o, backbone=o.backbone or meta["config"].get("backbone"),
        weights=o.weights or (o.checkpoint if meta["has_backbone"] else None))


def segment(paths: str | Path | Sequence[str | Path], options: SegmentOptions | None = None,
            **changes: Any) -> list[np.ndarray]:
    """Segment images (files or folders) without labels; returns one (H, W) segment-id array per image.

    ``options`` (default :class:`SegmentOptions`()) with ``changes`` to its fields, e.g.
    ``segment("photos/", k=5, out_dir="out")``.
    """
    o = replace(options or SegmentOptions(), **changes)  # checks the values (SegmentOptions.__post_init__)
    if o.out_dir is not None:  # before any compute: a run never finds out at the end that it cannot save
        require_writable(o.out_dir, "output folder")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    fitted = FittedSegmenter.load(o.clustering) if o.clustering is not None else None
    segmenter: Segmenter | None = fitted
    if o.method == "stego":
        segmenter, o = _stego_segmenter(o)
    elif fitted is not None:
        if fitted.method != o.method:
            raise ValueError(f"clustering {o.clustering} was fitted by method {fitted.method!r}, not {o.method!r}")
        fitted_k = fitted.settings.get("k" if o.method == "kmeans" else "num_segments")
        if o.k is not None and o.k != fitted_k:
            raise ValueError(f"clustering {o.clustering} was fitted with k={fitted_k}, not k={o.k}")
        o = replace(o, backbone=o.backbone or fitted.backbone, input_size=o.input_size or fitted.input_size)
    name = o.backbone or DEFAULT_BACKBONE
    size = as_size(o.input_size or DEFAULT_INPUT_SIZE)
    images = collect_images(paths, o.skip_invalid)
    views = _views(o, fitted.settings.get("views", {}) if fitted is not None else {})
    if fitted is not None:
        _check_views(fitted, views, o.clustering)
    check_views(size, **views)
    model = with_views(create_backbone(name, o.weights, download=o.download, role=o.role,
                                       trust_checkpoint=o.trust_checkpoint), **views, window_batch=o.batch_size,
                       input_size=size)
    tokens = len(images) * (size[0] // model.stride) * (size[1] // model.stride)
    k = o.k or DEFAULT_K
    if o.method == "kmeans" and fitted is None and k > tokens:
        raise SettingError(f"k = {k} segments is more than the {tokens} feature tokens of "
                           f"{len(images)} image(s) at input size {size[0]}x{size[1]} (stride {model.stride}); "
                           f"use k <= {tokens}")
    if o.method == "stego" and segmenter.head.dim_in != model.embed_dim:
        raise WeightsError(f"STEGO checkpoint {o.checkpoint} was trained on {segmenter.head.dim_in}-d features, but "
                           f"backbone {name} gives {model.embed_dim}-d ones: use the backbone it was trained on")
    fingerprint = weights_fingerprint(model)
    if fitted is not None:
        fitted.check(name, fingerprint, size, o.clustering)
    identity = {"backbone": name, "weights": fingerprint, "input_size": size}

    with tempfile.TemporaryDirectory(prefix="unseg-segment-") as tmp:
        dataset = SegmentationDataset(tmp, "", [Sample(i.id, i.path) for i in images])
        # a private cache of this one process, even under torchrun (RANK / WORLD_SIZE set)
        cache = load_split(model, dataset, size, cache_root=tmp, batch_size=o.batch_size, device=o.device,
                           num_workers=o.num_workers, rank=0, world_size=1, progress=False).cache
        if o.method == "kmeans" and fitted is None:
            segmenter = fitted = fit_kmeans(cache, k, seed=o.seed, niter=o.niter, nredo=o.nredo, **identity)
        elif o.method == "cd" and fitted is None:
            segmenter = fitted = fit_cd(cache, k, o.cd, seed=o.seed, niter=o.niter, nredo=o.nredo, **identity)
        if o.clustering is None and fitted is not None:  # a new fit: record how its tokens were seen
            window = None if views["window"] is None else list(views["window"])
            fitted.settings["views"] = {**views, "window": window, "scales": list(views["scales"])}
        coarse, logits = _coarse_labels(cache, segmenter, size, o.crf, images, o.upsample)
    labels = _full_size(coarse, logits, images, _label_dtype(segmenter.num_labels), o.processes)
    if o.save_clustering is not None:
        fitted.save(o.save_clustering)
    if o.out_dir is not None:
        title = (f"unseg segment: {o.method}, {name}, {segmenter.num_labels} segments"
                 f"{', dense CRF' if o.crf else ''}")
        write_segmentations(o.out_dir, images, labels, segmenter.num_labels, title)
    return labels
