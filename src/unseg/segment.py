"""``segment``: fully unsupervised segmentation of a user's own images (no labels), as arrays and pictures.

Images of any size are resized to the backbone's input; each image's segments come back at its
own size, with the group (one vocabulary across the folder) of each segment and a foreground
mask. The methods (:data:`unseg.catalog.METHODS`): ``spectral`` (the default: each photo
segmented on its own, ``unseg docs photos``), ``kmeans``, ``cd`` and ``stego``.

A fitted k-means / CD clustering can be saved and applied to new images; it records the
backbone, a fingerprint of its weights and the input size, and refuses any other.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .backbones import views_name
from .catalog import DEFAULT_K, DEFAULT_SEGMENTER, FitContext, FolderSegmenter, Segmenter, render_each, segmenter
from .datasets.base import IMAGE_EXTENSIONS, Sample, SegmentationDataset, read_image
from .defaults import NITER, NREDO
from .errors import ImageError, LayoutError, SettingError, WeightsError
from .features import BackboneSettings, load_split, resolve_device, weights_fingerprint
from .features.upsample import Upsampling
from .io import require_writable
from .kinds import COUNT, SEED
from .unsupervised.fitted import CDSettings, FittedSegmenter
from .unsupervised.per_image import ImageSegmentation
from .unsupervised.spectral import SpectralSettings
from .visualisation.overlay import palette
from .visualisation.photos import OUTPUT_FOLDERS, WrittenImage, write_image, write_photo_gallery

if TYPE_CHECKING:
    from .methods.stego import StegoSegmenter

__all__ = ["SegmentOptions", "Segmentation", "segment", "collect_images", "InputImage"]

log = logging.getLogger(__name__)


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
        raise ImageError(
            f"folder {folder} holds files that are not images: {', '.join(others)} "
            f"(images: {', '.join(IMAGE_EXTENSIONS)}); remove them or skip them (--skip-invalid)"
        )
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


@dataclass
class SegmentOptions:
    """Everything :func:`segment` takes besides the images, each default defined here once.

    ``model``: the backbone and how it sees the images (:class:`unseg.features.BackboneSettings`);
    its backbone, input size and views not given are a ``clustering`` file's (backbone and weights:
    a STEGO ``checkpoint``'s), else the usual defaults; its ``trust_checkpoint`` also unpickles
    ``checkpoint`` fully, which runs any code it holds (trusted files only). ``method``: a name of
    :data:`unseg.catalog.METHODS` (default: stego with a ``checkpoint``, the method of a
    ``clustering`` file, else spectral). ``spectral``: the spectral method's settings
    (:class:`unseg.unsupervised.SpectralSettings`; ``segments`` there fixes the number per image).
    ``groups``: the spectral vocabulary's size (default: the largest number of segments of one
    image). ``k``: clusters of kmeans; CD's preferred number of communities (default 8).
    ``clustering``: a file from ``save_clustering`` to apply instead of fitting (same backbone,
    weights, input size and views, else an error naming both). ``checkpoint``: STEGO's. ``cd``: CD
    settings (default: the authors' ViT-S/16 values). ``out_dir``: also write label, segment and
    foreground PNGs, panels and an ``index.html`` gallery. ``keep``: also return every image's
    maps (memory grows with the folder; :func:`segment` keeps none when writing to ``out_dir``
    unless asked). ``crf``: refine kmeans / cd / stego with a dense CRF (extra ``unseg[crf]``).
    ``niter``, ``nredo``: faiss k-means iterations and restarts when fitting kmeans / cd (the
    protocol's 100 and 5). ``upsample``: how kmeans / cd / stego read the features
    (``unseg docs upsampling``; default guided to the input size).
    """

    model: BackboneSettings = field(default_factory=BackboneSettings)
    method: str | None = None  # default: a checkpoint's (stego) or clustering's method, else DEFAULT_SEGMENTER
    spectral: SpectralSettings = field(default_factory=SpectralSettings)
    groups: int | None = None
    k: int | None = None
    out_dir: str | Path | None = None
    keep: bool | None = None  # default: True without out_dir, else False
    crf: bool = False
    clustering: str | Path | None = None
    save_clustering: str | Path | None = None
    checkpoint: str | Path | None = None
    cd: CDSettings = field(default_factory=CDSettings)
    skip_invalid: bool = False
    seed: int = 0
    threads: int | None = None
    niter: int = NITER
    nredo: int = NREDO
    # guided upsampling to the input size: the best measured on CamVid (`unseg docs upsampling`)
    upsample: Upsampling = field(default_factory=lambda: Upsampling("guided"))

    def resolved_method(self, clustering_method: str | None = None) -> str | None:
        """The method that runs: the one given, else stego with a checkpoint, else a clustering file's
        (``clustering_method``; None while the file is not read), else :data:`DEFAULT_SEGMENTER`."""
        if self.method or self.checkpoint:
            return self.method or "stego"
        return clustering_method if self.clustering else DEFAULT_SEGMENTER

    def __post_init__(self) -> None:
        """Values checked when the options are made, before any image is read or backbone built (the model's
        own when it is made)."""
        if not isinstance(self.model, BackboneSettings):
            raise SettingError(f"model is a {type(self.model).__name__}, not the BackboneSettings of the backbone")
        if self.method is not None:
            segmenter(self.method)  # a name that is not a segmenting method fails naming those that are
        for name in ("k", "groups"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SettingError(f"{name} = {value} is not allowed; it must be a whole number >= 1")
        method = self.resolved_method()
        if method != "spectral" and self.groups is not None:
            raise SettingError(
                f"groups is the spectral method's vocabulary size; method {method or 'of the clustering'} has k"
            )
        if method == "spectral" and (self.crf or self.clustering or self.save_clustering or self.checkpoint):
            raise SettingError(
                "crf, clustering, save_clustering and checkpoint apply to the kmeans, cd and stego "
                "methods, not to spectral (give --method)"
            )
        for name, kind in (("seed", SEED), ("niter", COUNT), ("nredo", COUNT)):
            kind.check(getattr(self, name), name)
        if self.threads is not None:
            COUNT.check(self.threads, "threads")


_MODEL_FIELDS = frozenset(f.name for f in fields(BackboneSettings) if f.init)


def _changed(o: SegmentOptions, changes: dict[str, Any]) -> SegmentOptions:
    """``o`` with ``changes`` to its fields; a change named as a field of its ``model`` goes there, so
    ``segment(paths, backbone=..., groups=...)`` needs no BackboneSettings of its own."""
    unknown = sorted(set(changes) - _MODEL_FIELDS - {f.name for f in fields(SegmentOptions)})
    if unknown:
        raise SettingError(
            f"segment has no option {', '.join(unknown)}: its options are the fields of SegmentOptions "
            "and of its model, BackboneSettings"
        )
    ours = {name: value for name, value in changes.items() if name not in _MODEL_FIELDS}
    model = ours.pop("model", o.model)
    theirs = {name: value for name, value in changes.items() if name in _MODEL_FIELDS}
    return replace(o, **ours, model=replace(model, **theirs) if theirs else model)


@dataclass
class Segmentation:
    """What :func:`segment` did: the images (in order), the method's description (``settings``), the
    number of groups, the time of each stage, and with ``keep`` every image's :class:`ImageSegmentation`
    (``results``)."""

    images: list[InputImage]
    method: str
    backbone: str
    views: str
    num_groups: int
    settings: dict[str, Any]
    results: list[ImageSegmentation]
    gallery: Path | None = None
    # wall time of each stage: features (decode, forward), fit, render (decode, boundaries, files), gallery
    seconds: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: what ran and what it found (the CLI prints it)."""
        s = self.settings
        view = f", backbone view {self.views[1:]}" if self.views else ""
        if self.method == "spectral":
            per = s["segments_per_image"]
            found = (
                f"segments per image {per['min']}-{per['max']} (median {per['median']:g}; "
                + (f"{s['segments']} asked" if s["segments"] else f"merged at cosine {s['merge_threshold']}")
                + f"), {self.num_groups} groups ({'given' if s['groups_given'] else 'the most segments of an image'})"
            )
        else:
            up = s["upsample"]["upsample"]
            found = (
                f"{self.num_groups} clusters, {'token labels' if up == 'none' else up + ' upsampling'} "
                f"to the input size{', dense CRF' if s['crf'] else ''}"
            )
        return f"{len(self.images)} images, {self.method} on {self.backbone}{view}: {found}"


def _check_views(fitted: FittedSegmenter, views: dict[str, Any], path: str | Path) -> None:
    """A clustering applies only to tokens seen the way it was fitted on (its ``views``; none in older files)."""
    theirs = views_name(**fitted.settings.get("views", {})) or "none"
    ours = views_name(**views) or "none"
    if theirs != ours:
        raise WeightsError(
            f"clustering {path} was fitted on backbone views {theirs.lstrip('-')}; this run uses "
            f"{ours.lstrip('-')} (--window, --window-overlap, --scales). Fit a new one, or run with "
            "the views it was fitted with"
        )


def _stego(o: SegmentOptions) -> tuple[StegoSegmenter, SegmentOptions]:
    """The STEGO checkpoint's segmenter, with the backbone (and its weights, when the checkpoint holds
    them) it was trained on filled in where not given."""
    if o.checkpoint is None:
        raise SettingError("method 'stego' needs checkpoint=<a STEGO .ckpt> (its head and cluster probe)")
    if o.clustering is not None or o.save_clustering is not None:
        raise SettingError(
            "method 'stego' is fitted already: its checkpoint is the model; "
            "clustering / save_clustering are for kmeans and cd"
        )
    from .methods.stego import StegoSegmenter, load_stego

    head, probe, _, meta = load_stego(o.checkpoint, trust_checkpoint=o.model.trust_checkpoint)
    if o.k is not None and o.k != probe.n_clusters:
        raise SettingError(f"STEGO checkpoint {o.checkpoint} has {probe.n_clusters} clusters, not k={o.k}")
    model = o.model.fill(
        backbone=meta["config"].get("backbone"), weights=o.checkpoint if meta["has_backbone"] else None
    )
    return StegoSegmenter(head, probe, resolve_device(o.model.device)), replace(o, model=model)


def _clear_outputs(out: Path, images: Sequence[InputImage]) -> None:
    """Files of an earlier run into the same folder that this run does not write are removed, so the
    folder holds this run's images only (other files stay)."""
    written = {i.id for i in images}
    for folder in OUTPUT_FOLDERS:
        for stale in (out / folder).glob("*.*"):
            if stale.stem not in written and stale.suffix in (".png", ".jpg"):
                stale.unlink()


def segment(
    paths: str | Path | Sequence[str | Path], options: SegmentOptions | None = None, **changes: Any
) -> Segmentation:
    """Segment images (files or folders) without labels, each at its own size.

    ``options`` (default :class:`SegmentOptions`()) with ``changes`` to its fields or its model's, e.g.
    ``segment("photos/", groups=10, input_size=320, out_dir="out")``. Images are decoded, rendered and
    written one at a time on each thread, so memory does not grow with the folder unless ``keep``.
    """
    o = _changed(options or SegmentOptions(), changes)  # checks the values (SegmentOptions.__post_init__)
    keep = o.out_dir is None if o.keep is None else o.keep
    if o.out_dir is not None:  # before any compute: a run never finds out at the end that it cannot save
        require_writable(o.out_dir, "output folder")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    saved = FittedSegmenter.load(o.clustering) if o.clustering is not None else None
    method = o.resolved_method(saved.method if saved else None)
    assert method is not None  # the clustering file, when given, is read
    o = replace(o, method=method)
    stego = None
    if method == "stego":
        stego, o = _stego(o)  # it refuses a clustering: saved is None
    elif saved is not None:
        if saved.method != method:
            raise SettingError(f"clustering {o.clustering} was fitted by method {saved.method!r}, not {method!r}")
        fitted_k = saved.settings.get("k" if method == "kmeans" else "num_segments")
        if o.k is not None and o.k != fitted_k:
            raise SettingError(f"clustering {o.clustering} was fitted with k={fitted_k}, not k={o.k}")
        fitted_views = saved.settings.get("views", {})  # none in older files
        o = replace(o, model=o.model.fill(backbone=saved.backbone, input_size=saved.input_size, **fitted_views))
    fitted: Segmenter | None = stego if stego is not None else saved
    name, size, views = o.model.backbone_name, o.model.size, o.model.views()
    images = collect_images(paths, o.skip_invalid)
    if saved is not None:
        assert o.clustering is not None  # saved was read from it
        _check_views(saved, views, o.clustering)
    model = o.model.build_backbone()
    tokens = len(images) * (size[0] // model.stride) * (size[1] // model.stride)
    if method == "kmeans" and fitted is None and (o.k or DEFAULT_K) > tokens:
        raise SettingError(
            f"k = {o.k or DEFAULT_K} segments is more than the {tokens} feature tokens of "
            f"{len(images)} image(s) at input size {size[0]}x{size[1]} (stride {model.stride}); "
            f"use k <= {tokens}"
        )
    if stego is not None and stego.head.dim_in != model.embed_dim:
        raise WeightsError(
            f"STEGO checkpoint {o.checkpoint} was trained on {stego.head.dim_in}-d features, but "
            f"backbone {name} gives {model.embed_dim}-d ones: use the backbone it was trained on"
        )
    fingerprint = weights_fingerprint(model)
    if saved is not None:
        assert o.clustering is not None  # saved was read from it
        saved.check(name, fingerprint, size, o.clustering)
    identity = {"backbone": name, "weights": fingerprint, "input_size": size}

    seconds = dict.fromkeys(("features", "fit", "render", "gallery"), 0.0)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] += now - clock
        clock = now

    with tempfile.TemporaryDirectory(prefix="unseg-segment-") as tmp:
        dataset = SegmentationDataset(tmp, "", [Sample(i.id, i.path) for i in images])
        # a private cache of this one process, even under torchrun (RANK / WORLD_SIZE set)
        cache = load_split(
            model,
            dataset,
            size,
            cache_root=tmp,
            batch_size=o.model.batch_size,
            device=o.model.device,
            num_workers=o.model.num_workers,
            rank=0,
            world_size=1,
            progress=False,
        ).cache
        lap("features")
        folder: FolderSegmenter = segmenter(method)(FitContext(cache, identity, size, o.seed, o.threads, fitted), o)
        lap("fit")
        clusters = getattr(folder, "segmenter", None)  # what a folder-level method (kmeans, cd, stego) applies
        if isinstance(clusters, FittedSegmenter) and o.clustering is None:
            window = None if views["window"] is None else list(views["window"])  # a new fit: how its tokens were seen
            clusters.settings["views"] = {**views, "window": window, "scales": list(views["scales"])}
        colours = palette(folder.num_groups)

        def use(i: int, image: Image.Image, result: ImageSegmentation) -> tuple[Any, WrittenImage | None]:
            written = write_image(o.out_dir, images[i].id, image, result, colours) if o.out_dir is not None else None
            return (result if keep else None), written

        done = render_each(folder, cache, lambda i: read_image(images[i].path), use, o.threads)
        lap("render")
    results = [r for r, _ in done if r is not None]
    written = [w for _, w in done if w is not None]
    if o.save_clustering is not None:
        assert isinstance(clusters, FittedSegmenter)  # kmeans or cd: the other methods refuse it before any work
        clusters.save(o.save_clustering)
    run = Segmentation(
        images, method, name, views_name(**views), folder.num_groups, folder.describe(), results, seconds=seconds
    )
    if o.out_dir is not None:
        _clear_outputs(Path(o.out_dir), images)
        run.gallery = write_photo_gallery(
            o.out_dir, written, folder.num_groups, f"unseg segment: {method}, {name}", run.describe() + "."
        )
        lap("gallery")
    return run
