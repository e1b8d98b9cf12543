"""One way to load a split: backbone -> cached features -> masks in cache order -> class count.

Every entry point that scores features (the protocols, the fully unsupervised pipeline,
STEGO's pipeline, ``segment``) loads its data through :func:`load_split`, usually by way of
a :class:`Source`, the backbone-on-data settings they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..backbones import DEFAULT_BACKBONE, Backbone, as_backbone, create_backbone, views_name, with_views
from ..backbones.views import DEFAULT_OVERLAP
from ..datasets import SegmentationDataset, create_dataset
from ..defaults import BATCH_SIZE, NUM_WORKERS
from ..errors import SettingError
from ..kinds import COUNT, DEVICE, FRACTION, MAX_PIXELS, NON_NEGATIVE, Real
from .cache import FeatureCache, cached_masks
from .extract import extract_features, require_complete, weights_fingerprint
from .transforms import DEFAULT_INPUT_SIZE, as_size

__all__ = ["Source", "SplitData", "load_split", "infer_num_classes", "check_views"]


def infer_num_classes(dataset: SegmentationDataset, masks: np.ndarray) -> int:
    """The dataset's class count, or (a folder of masks without one) the largest labelled id + 1."""
    if dataset.num_classes:
        return dataset.num_classes
    labelled = masks[masks != 255]
    return int(labelled.max()) + 1 if labelled.size else 0


@dataclass
class SplitData:
    """One split ready to score: the dataset, its cached features, masks in cache order, #classes.

    ``masks`` is None (and ``num_classes`` 0) for images without labels.
    """

    dataset: SegmentationDataset
    cache: FeatureCache
    masks: np.ndarray | None
    num_classes: int


def load_split(
    backbone: Backbone,
    dataset: SegmentationDataset,
    input_size: int | Sequence[int],
    mask_size: int | Sequence[int] | None = None,
    **extract_options: Any,
) -> SplitData:
    """Extract (or reuse) ``dataset``'s features and read its masks at ``mask_size`` (None: no masks).

    ``extract_options`` go to :func:`unseg.features.extract_features` (cache_root, device, ...).
    """
    cache = require_complete(extract_features(backbone, dataset, input_size, **extract_options), dataset)
    if mask_size is None:
        return SplitData(dataset, cache, None, 0)
    masks = cached_masks(cache, dataset, as_size(mask_size))
    return SplitData(dataset, cache, masks, infer_num_classes(dataset, masks))


SCALE = Real(0, low_open=True)


def check_views(
    input_size: int | Sequence[int],
    window: int | Sequence[int] | None = None,
    window_overlap: float = DEFAULT_OVERLAP,
    scales: Sequence[float] = (1.0,),
) -> None:
    """Sizes and views a backbone can be run with, checked before it is built: each size within bounds,
    the overlap in [0, 1), and every input resized by a scale at most :data:`unseg.kinds.MAX_PIXELS`."""
    size = as_size(input_size, "input size")
    if window is not None:
        as_size(window, "window")
    FRACTION.check(window_overlap, "window_overlap")
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise SettingError(f"scales {scales!r} is not a list of one or more factors, e.g. (1.0, 1.5)")
    for scale in scales:
        SCALE.check(scale, "scale")
        pixels = size[0] * scale * size[1] * scale
        if pixels > MAX_PIXELS:
            raise SettingError(
                f"scale {scale:g} makes the {size[0]}x{size[1]} input {pixels:.0f} pixels, more than "
                f"the {MAX_PIXELS} an image may have here (--scales, --input-size; "
                "``unseg docs reliability``)"
            )


@dataclass
class Source:
    """Which backbone on which data: the arguments every protocol shares.

    ``backbone``: a registered name (``unseg backbones``), a unseg :class:`Backbone`, or any
    ``nn.Module`` mapping (B, 3, H, W) images to (B, D, H/stride, W/stride) features (``stride``
    given here or as its attribute). It is built once and reused for every split.

    ``window`` (px, one value or H W) runs the backbone on overlapping windows of the input
    (``window_overlap``: the fraction two neighbours share), ``scales`` on the input resized by
    each factor, averaged (``unseg docs upsampling``, "Large photos"); features stay on the input's grid.
    ``hash_images``: identify image files by their bytes (``unseg docs reliability``).

    The settings are checked when a Source is made (sizes, counts, the device, each scaled input
    within :data:`unseg.kinds.MAX_PIXELS`), before any backbone is built or image read.
    """

    backbone: str | nn.Module = DEFAULT_BACKBONE
    weights: str | None = None
    download: bool = False
    role: str = "auto"
    trust_checkpoint: bool = False  # unpickle ``weights`` fully (runs code in the file): trusted files only
    dataset: str = "camvid"
    root: str | Path = "."
    dataset_options: dict[str, Any] = field(default_factory=dict)  # e.g. the folder dataset's masks, num_classes
    input_size: int | Sequence[int] = DEFAULT_INPUT_SIZE
    cache_dir: str | Path | None = None
    device: str = "auto"
    batch_size: int = BATCH_SIZE
    num_workers: int = NUM_WORKERS
    skip_corrupt: bool = False
    hash_images: bool = False
    progress: bool = True
    stride: int | None = None  # a plain module's feature stride, when it has no ``stride`` attribute
    window: int | Sequence[int] | None = None  # sliding window (px); None: the whole input in one pass
    window_overlap: float = DEFAULT_OVERLAP
    scales: Sequence[float] = (1.0,)
    _model: Backbone | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_views(self.input_size, self.window, self.window_overlap, self.scales)
        COUNT.check(self.batch_size, "batch_size")
        NON_NEGATIVE.check(self.num_workers, "num_workers")
        DEVICE.check(self.device, "device")

    def build_backbone(self) -> Backbone:
        """The backbone, built (or wrapped) on first use and kept; with a window or scales, seen through them
        (windows per forward pass: ``batch_size``), and checked against the input size before any extraction."""
        if self._model is None:
            if isinstance(self.backbone, str):
                model = create_backbone(
                    self.backbone,
                    self.weights,
                    download=self.download,
                    role=self.role,
                    trust_checkpoint=self.trust_checkpoint,
                )
            else:
                model = as_backbone(self.backbone, self.stride)
            self._model = with_views(
                model,
                self.window,
                self.window_overlap,
                self.scales,
                window_batch=self.batch_size,
                input_size=as_size(self.input_size),
            )
        return self._model

    def build_dataset(self, split: str) -> SegmentationDataset:
        return create_dataset(self.dataset, self.root, split, **self.dataset_options)

    def extract_options(self) -> dict[str, Any]:
        """How :func:`load_split` extracts: cache folder, device, batches, workers."""
        return {
            "cache_root": self.cache_dir,
            "batch_size": self.batch_size,
            "device": self.device,
            "num_workers": self.num_workers,
            "skip_corrupt": self.skip_corrupt,
            "progress": self.progress,
            "hash_images": self.hash_images,
        }

    def features(self, dataset: SegmentationDataset) -> FeatureCache:
        """``dataset``'s cached features (extracted on first use)."""
        return self.load_split(dataset=dataset).cache

    def load_split(
        self,
        split: str | None = None,
        mask_size: int | Sequence[int] | None = None,
        dataset: SegmentationDataset | None = None,
        input_size: int | Sequence[int] | None = None,
    ) -> SplitData:
        """Split ``split`` (or a ready ``dataset``, e.g. five-cropped) with masks at ``mask_size``
        (None: none), features at ``input_size`` (default the source's)."""
        if dataset is None:
            if split is None:
                raise ValueError("load_split needs a split name or a dataset")
            dataset = self.build_dataset(split)
        return load_split(
            self.build_backbone(),
            dataset,
            self.input_size if input_size is None else input_size,
            mask_size,
            **self.extract_options(),
        )

    def describe(self) -> dict[str, Any]:
        """The settings a result reports; a window or scales also show in the backbone's name, as in its cache's."""
        if isinstance(self.backbone, str):
            name = self.backbone + views_name(self.window, self.window_overlap, self.scales)
            weights = self.weights or "default"
        else:
            model = self.build_backbone()
            name, weights = model.cache_name, f"fingerprint {weights_fingerprint(model)}"
        views: dict[str, Any] = {}
        if self.window is not None:
            views.update(window=list(as_size(self.window)), window_overlap=self.window_overlap)
        if tuple(self.scales) != (1.0,):
            views["scales"] = list(self.scales)
        return {
            "backbone": name,
            "weights": weights,
            "dataset": self.dataset,
            "input_size": list(as_size(self.input_size)),
            **views,
        }
