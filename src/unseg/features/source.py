"""One way to load a split: backbone -> cached features -> masks in cache order -> class count.

Every entry point that scores features (the protocols, the fully unsupervised pipeline,
STEGO's pipeline, ``segment``) loads its data through :func:`load_split`, usually by way of
a :class:`Source`, the backbone-on-data settings they share (``segment``, which has no dataset,
takes the backbone's part, :class:`BackboneSettings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from torch import nn

from ..backbones import DEFAULT_BACKBONE, Backbone, BackboneView, as_backbone, create_backbone, views_name, with_views
from ..backbones.views import DEFAULT_OVERLAP, DEFAULT_SCALES
from ..datasets import SegmentationDataset, create_dataset
from ..defaults import BATCH_SIZE, NUM_WORKERS
from ..errors import SettingError
from ..kinds import COUNT, DEVICE, FRACTION, MAX_PIXELS, NON_NEGATIVE, Real
from .cache import FeatureCache, cached_masks
from .extract import extract_features, require_complete, weights_fingerprint
from .transforms import DEFAULT_INPUT_SIZE, as_size

__all__ = ["BackboneSettings", "Source", "SplitData", "load_split", "infer_num_classes"]


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
_Settings = TypeVar("_Settings", bound="BackboneSettings")


@dataclass
class BackboneSettings:
    """Which backbone, and how it sees the input: what every entry point that extracts features shares.

    ``backbone``: a registered name (``unseg backbones``), a unseg :class:`Backbone`, or any
    ``nn.Module`` mapping (B, 3, H, W) images to (B, D, H/stride, W/stride) features (``stride``
    given here or as its attribute). It is built once and reused.

    ``window`` (px, one value or H W) runs the backbone on overlapping windows of the input
    (``window_overlap``: the fraction two neighbours share), ``scales`` on the input resized by
    each factor, averaged (``unseg docs upsampling``, "Large photos"); features stay on the input's grid.

    None in ``backbone``, ``input_size``, ``window_overlap`` and ``scales`` means "the default"
    (``DEFAULT_BACKBONE``, ``DEFAULT_INPUT_SIZE``, ``DEFAULT_OVERLAP``,
    ``DEFAULT_SCALES``), so that ``segment`` can tell a value not given from the default and
    take a saved clustering's or checkpoint's instead (:meth:`fill`). Read them resolved
    (:attr:`size`, :attr:`backbone_name`, :meth:`views`), not from the fields.

    The settings are checked when made (sizes, counts, the device, each scaled input within
    :data:`unseg.kinds.MAX_PIXELS`), before any backbone is built or image read.
    """

    backbone: str | nn.Module | None = None  # None: DEFAULT_BACKBONE
    weights: str | Path | None = None  # None: the backbone's own (packaged, or with download the hub's)
    download: bool = False
    role: str = "auto"
    trust_checkpoint: bool = False  # unpickle ``weights`` fully (runs code in the file): trusted files only
    input_size: int | Sequence[int] | None = None  # None: DEFAULT_INPUT_SIZE
    device: str = "auto"
    batch_size: int = BATCH_SIZE
    num_workers: int = NUM_WORKERS
    stride: int | None = None  # a plain module's feature stride, when it has no ``stride`` attribute
    window: int | Sequence[int] | None = None  # sliding window (px); None: the whole input in one pass
    window_overlap: float | None = None  # None: DEFAULT_OVERLAP
    scales: Sequence[float] | None = None  # None: DEFAULT_SCALES
    _model: Backbone | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = self.size
        if self.window is not None:
            as_size(self.window, "window")
        if self.window_overlap is not None:
            FRACTION.check(self.window_overlap, "window_overlap")
        scales = DEFAULT_SCALES if self.scales is None else self.scales
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
        COUNT.check(self.batch_size, "batch_size")
        NON_NEGATIVE.check(self.num_workers, "num_workers")
        DEVICE.check(self.device, "device")

    @property
    def size(self) -> tuple[int, int]:
        """The input size (H, W): the one given, else ``DEFAULT_INPUT_SIZE``."""
        return as_size(DEFAULT_INPUT_SIZE if self.input_size is None else self.input_size, "input size")

    @property
    def backbone_name(self) -> str:
        """The backbone as caches and saved clusterings name it, without its views: the registered name,
        else the module's cache name."""
        if self.backbone is None:
            return DEFAULT_BACKBONE
        if isinstance(self.backbone, str):
            return self.backbone
        model = self.build_backbone()
        while isinstance(model, BackboneView):
            model = model.inner
        return model.cache_name

    def views(self) -> dict[str, Any]:
        """``window`` ((H, W) or None), ``window_overlap``, ``scales`` (a tuple), defaults filled in: the
        keyword arguments of :func:`unseg.backbones.with_views` and :func:`unseg.backbones.views_name`."""
        return {
            "window": None if self.window is None else as_size(self.window, "window"),
            "window_overlap": DEFAULT_OVERLAP if self.window_overlap is None else self.window_overlap,
            "scales": DEFAULT_SCALES if self.scales is None else tuple(self.scales),
        }

    def fill(self: _Settings, **fallbacks: Any) -> _Settings:
        """A copy whose fields left None take ``fallbacks`` (None ones change nothing), checked again: how
        ``segment`` defaults to a saved clustering's or a checkpoint's backbone, input size and views."""
        return replace(self, **{k: v for k, v in fallbacks.items() if v is not None and getattr(self, k) is None})

    def build_backbone(self) -> Backbone:
        """The backbone, built (or wrapped) on first use and kept; with a window or scales, seen through them
        (windows per forward pass: ``batch_size``), and checked against the input size before any extraction."""
        if self._model is None:
            if self.backbone is None or isinstance(self.backbone, str):
                model = create_backbone(
                    self.backbone_name,
                    self.weights,
                    download=self.download,
                    role=self.role,
                    trust_checkpoint=self.trust_checkpoint,
                )
            else:
                model = as_backbone(self.backbone, self.stride)
            self._model = with_views(model, **self.views(), window_batch=self.batch_size, input_size=self.size)
        return self._model

    def describe(self) -> dict[str, Any]:
        """The settings a result reports; a window or scales also show in the backbone's name, as in its cache's."""
        views = self.views()
        if self.backbone is None or isinstance(self.backbone, str):
            name = self.backbone_name + views_name(**views)
            weights = str(self.weights) if self.weights else "default"
        else:
            model = self.build_backbone()
            name, weights = model.cache_name, f"fingerprint {weights_fingerprint(model)}"
        shown: dict[str, Any] = {}
        if views["window"] is not None:
            shown.update(window=list(views["window"]), window_overlap=views["window_overlap"])
        if views["scales"] != DEFAULT_SCALES:
            shown["scales"] = list(views["scales"])
        return {"backbone": name, "weights": weights, "input_size": list(self.size), **shown}


@dataclass
class Source(BackboneSettings):
    """Which backbone on which data: the arguments every protocol shares, the backbone's
    (:class:`BackboneSettings`) and the dataset's.

    ``hash_images``: identify image files by their bytes (``unseg docs reliability``).
    """

    dataset: str = "camvid"
    root: str | Path = "."
    dataset_options: dict[str, Any] = field(default_factory=dict)  # e.g. the folder dataset's masks, num_classes
    cache_dir: str | Path | None = None
    skip_corrupt: bool = False
    hash_images: bool = False
    progress: bool = True

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
            self.size if input_size is None else input_size,
            mask_size,
            **self.extract_options(),
        )

    def describe(self) -> dict[str, Any]:
        """The backbone's settings a result reports, and the dataset."""
        return {**super().describe(), "dataset": self.dataset}
