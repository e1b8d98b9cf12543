"""``segment``: fully unsupervised segmentation of a user's own images (no labels), as arrays and pictures.

Images of any size are resized to the backbone's square input; their segment maps come
back at each image's own size. Methods:

- ``kmeans``: standardise + PCA 50 + k-means (k segments) on the images' tokens;
- ``cd``: community detection (SPEC §3) on an overclustering of the tokens, optionally
  after cluster-based foreground extraction; k is Infomap's preferred number of segments;
- ``stego``: a trained STEGO head and its cluster probe (``checkpoint``).

A fitted k-means / CD clustering can be saved and applied to new images; it records the
backbone, a fingerprint of its weights and the input size, and refuses any other.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .backbones import DEFAULT_BACKBONE, create_backbone
from .datasets.base import IMAGE_EXTENSIONS, Sample, SegmentationDataset, read_image
from .errors import ImageError, LayoutError, SettingError
from .features import FeatureCache, as_size, extract_features, resolve_device, upsample_labels, weights_fingerprint
from .features.upsample import Upsampling, guide_tensor
from .io import atomic_path, require_writable
from .unsupervised.fitted import CDSettings, FittedSegmenter, fit_cd, fit_kmeans
from .visualisation import overlay, palette
from .visualisation.gallery import GalleryItem, write_gallery

__all__ = ["METHODS", "DEFAULT_K", "segment", "collect_images", "write_segmentations"]

log = logging.getLogger(__name__)
METHODS = ("kmeans", "stego", "cd")
DEFAULT_K = 8
DEFAULT_INPUT_SIZE = 448


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
            files += _image_files(p, skip_invalid)
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


@torch.no_grad()
def _coarse_labels(cache: FeatureCache, fitted: FittedSegmenter | None, stego: tuple | None,
                   size: tuple[int, int], crf: bool, device: str, images: Sequence[InputImage] = (),
                   upsample: Upsampling | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per image: segment ids on the token grid (STEGO: at the input size, as its evaluation) and,
    for a CRF, (segments, h, w) log-probabilities on the token grid. With ``upsample`` both are
    on the upsampled grid (default the input size; guided: by the image ``images[i]``), one
    image at a time: k-means / CD assign every upsampled feature, STEGO's probe reads upsampled codes."""
    from .methods.stego import stego_codes
    from .methods.stego.evaluate import upsample_codes

    upsample = upsample or Upsampling()
    paths = {i.id: i.path for i in images}

    dev = resolve_device(device)
    if stego is not None:
        head, probe = (m.to(dev).eval() for m in stego)
    labels, logits = [], []
    for i in range(len(cache)):
        feats = cache.features(i)
        target = upsample.target(feats.shape[1:], size)
        guide = guide_tensor(read_image(paths[cache.ids[i]]), target) if upsample.guided else None
        if stego is not None:
            code = stego_codes(head, torch.from_numpy(feats)[None].to(dev))
            up = (upsample_codes(code, target, upsample, iter([guide])) if upsample.active
                  else F.interpolate(code, size=size, mode="bilinear", align_corners=False))
            labels.append(probe.log_probs(up)[0].argmax(0).cpu().numpy())
            if crf:
                logits.append(probe.log_probs(code)[0].cpu().numpy())
        else:
            if upsample.active:
                feats = upsample.apply(torch.from_numpy(feats), target, guide).numpy()
            tokens = feats.reshape(len(feats), -1).T
            labels.append(fitted.labels(tokens).reshape(feats.shape[1:]))
            if crf:
                logits.append(fitted.log_probabilities(tokens).T.reshape(-1, *feats.shape[1:]))
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
    """``labels/<id>.png`` (segment ids), ``overlays/<id>.png`` and ``index.html`` under ``out_dir``."""
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
    legend = [(f"segment {i}", colours[i]) for i in range(num_labels)]
    return write_gallery(out / "index.html", {"": items}, title,
                         intro=f"{len(items)} images; label maps hold segment ids 0..{num_labels - 1}.",
                         legend=legend)


def segment(paths: str | Path | Sequence[str | Path], method: str = "kmeans", backbone: str | None = None,
            weights: str | Path | None = None, k: int | None = None, out_dir: str | Path | None = None,
            crf: bool = False, clustering: str | Path | None = None, save_clustering: str | Path | None = None, *,
            checkpoint: str | Path | None = None, input_size: int | Sequence[int] | None = None,
            cd: CDSettings | None = None, skip_invalid: bool = False, seed: int = 0, download: bool = False,
            role: str = "auto", device: str = "auto", batch_size: int = 16, num_workers: int = 2,
            processes: int | None = None, niter: int = 100, nredo: int = 5,
            trust_checkpoint: bool = False, upsample: Upsampling | None = None) -> list[np.ndarray]:
    """Segment images (files or folders) without labels; returns one (H, W) segment-id array per image.

    ``k``: segments (k-means clusters; CD's preferred number of communities; default 8).
    ``clustering``: a file from ``save_clustering`` to apply instead of fitting (same backbone,
    weights and input size, else an error naming both). ``checkpoint``: STEGO's. ``cd``: CD
    settings. ``out_dir``: also write label PNGs, overlays and an ``index.html`` gallery.
    ``crf``: refine with a dense CRF (extra ``unseg[crf]``). ``niter``, ``nredo``: faiss k-means
    iterations and restarts when fitting (the protocol's 100 and 5). ``trust_checkpoint``:
    unpickle ``weights`` / ``checkpoint`` fully, which runs any code they hold (trusted files only).
    ``upsample``: segment upsampled features (docs/upsampling.md), e.g. ``Upsampling("guided")``
    for masks that follow the image's edges at the input size (memory: one image's features at a time).
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if k is not None and k < 1:
        raise SettingError(f"k = {k} segments is not allowed; k must be at least 1 (default {DEFAULT_K})")
    if out_dir is not None:  # before any compute: a run never finds out at the end that it cannot save
        require_writable(out_dir, "output folder")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    fitted = FittedSegmenter.load(clustering) if clustering is not None else None
    stego = None
    if method == "stego":
        if checkpoint is None:
            raise ValueError("method 'stego' needs checkpoint=<a STEGO .ckpt> (its head and cluster probe)")
        if clustering is not None or save_clustering is not None:
            raise ValueError("method 'stego' is fitted already: its checkpoint is the model; "
                             "clustering / save_clustering are for kmeans and cd")
        from .methods.stego import load_stego

        head, probe, _, meta = load_stego(checkpoint, trust_checkpoint=trust_checkpoint)
        if k is not None and k != probe.n_clusters:
            raise ValueError(f"STEGO checkpoint {checkpoint} has {probe.n_clusters} clusters, not k={k}")
        stego = (head, probe)
        backbone = backbone or meta["config"].get("backbone")
        weights = weights or (checkpoint if meta["has_backbone"] else None)
    elif fitted is not None:
        if fitted.method != method:
            raise ValueError(f"clustering {clustering} was fitted by method {fitted.method!r}, not {method!r}")
        fitted_k = fitted.settings.get("k" if method == "kmeans" else "num_segments")
        if k is not None and k != fitted_k:
            raise ValueError(f"clustering {clustering} was fitted with k={fitted_k}, not k={k}")
        backbone = backbone or fitted.backbone
        input_size = input_size or fitted.input_size
    name = backbone or DEFAULT_BACKBONE
    size = as_size(input_size or DEFAULT_INPUT_SIZE)
    images = collect_images(paths, skip_invalid)
    model = create_backbone(name, weights, download=download, role=role, trust_checkpoint=trust_checkpoint)
    tokens = len(images) * (size[0] // model.stride) * (size[1] // model.stride)
    if method == "kmeans" and fitted is None and (k or DEFAULT_K) > tokens:
        raise SettingError(f"k = {k or DEFAULT_K} segments is more than the {tokens} feature tokens of "
                           f"{len(images)} image(s) at input size {size[0]}x{size[1]} (stride {model.stride}); "
                           f"use k <= {tokens}")
    fingerprint = weights_fingerprint(model)
    if fitted is not None:
        fitted.check(name, fingerprint, size, clustering)
    identity = {"backbone": name, "weights": fingerprint, "input_size": size}

    with tempfile.TemporaryDirectory(prefix="unseg-segment-") as tmp:
        dataset = SegmentationDataset(tmp, "", [Sample(i.id, i.path) for i in images])
        # a private cache of this one process, even under torchrun (RANK / WORLD_SIZE set)
        cache = extract_features(model, dataset, size, cache_root=tmp, batch_size=batch_size, device=device,
                                 num_workers=num_workers, rank=0, world_size=1, progress=False)
        if method == "kmeans" and fitted is None:
            fitted = fit_kmeans(cache, k or DEFAULT_K, seed=seed, niter=niter, nredo=nredo, **identity)
        elif method == "cd" and fitted is None:
            fitted = fit_cd(cache, k or DEFAULT_K, cd or CDSettings(), seed=seed, niter=niter, nredo=nredo,
                            **identity)
        coarse, logits = _coarse_labels(cache, fitted, stego, size, crf, device, images, upsample)
    num_labels = stego[1].n_clusters if stego is not None else fitted.num_labels
    labels = _full_size(coarse, logits, images, _label_dtype(num_labels), processes)
    if save_clustering is not None:
        fitted.save(save_clustering)
    if out_dir is not None:
        title = f"unseg segment: {method}, {name}, {num_labels} segments{', dense CRF' if crf else ''}"
        write_segmentations(out_dir, images, labels, num_labels, title)
    return labels
