"""Leopart's multi-crop (``unseg docs methods``): global and local crops of one image, and where each pair overlaps.

Every crop is a RandomResizedCrop of the original image; every crop after the first is
redrawn until it shares more than ``min_intersection`` of the image area with every
global crop drawn before it (the two global crops, as in the authors' code, twice that),
so every (global, other) pair has a region to compare. For each global crop g and every
crop v the intersection g∩v is returned twice: in g's pixel frame and in v's pixel frame,
as (x1, y1, x2, y2) - the boxes the RoI-align of targets and predictions uses.

Randomness comes from torch's global generator only (torchvision's transforms and the
blur sigma), so :class:`MultiCropDataset` makes every sample's crops a function of
(seed, epoch, index) by seeding around each call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset, DistributedSampler
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ...datasets.base import SegmentationDataset
from ...errors import ConfigError, UnsegError

__all__ = ["CropConfig", "CropError", "MultiCrop", "MultiCropDataset", "EpochSampler", "derived_seed"]


class CropError(UnsegError, ValueError):
    """Crops that cannot satisfy the overlap rule on an image."""


@dataclass
class CropConfig:
    """Multi-crop settings. Defaults: ``unseg docs methods`` (the authors' ``LeopartTransforms``)."""

    num_global: int = 2
    num_local: int = 4
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.25, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.25)
    min_intersection: float = 0.01  # share of the image area a crop must share with every global crop
    max_tries: int = 1000  # redraws of one crop before giving up with a CropError
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5


class _GaussianBlur:
    """PIL Gaussian blur with sigma drawn uniformly from ``sigma`` (SwAV / DINO's blur), from torch's generator."""

    def __init__(self, sigma: tuple[float, float]) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = float(torch.empty(()).uniform_(*self.sigma))
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))


class MultiCrop:
    """PIL image -> ``{"crops": [num_global + num_local] (3, S, S) tensors, "boxes_global", "boxes_crop"}``.

    ``boxes_global[g, v]`` is g∩v in g's pixel frame, ``boxes_crop[g, v]`` the same region in
    v's frame; both (num_global, num_crops, 4) float32 (x1, y1, x2, y2). Crop sizes must be
    multiples of the backbone's ``stride`` so that the boxes map onto its token grid.
    """

    def __init__(self, cfg: CropConfig, mean: Sequence[float], std: Sequence[float], stride: int) -> None:
        for key in ("global_size", "local_size"):
            if getattr(cfg, key) % stride:
                raise ConfigError(
                    f"key 'crops.{key}' = {getattr(cfg, key)} is not a multiple of the backbone stride {stride}"
                )
        if cfg.num_global < 1 or cfg.num_global + cfg.num_local < 2:
            raise ConfigError(
                "keys 'crops.num_global' / 'crops.num_local': need at least one global crop and "
                f"one other crop, got {cfg.num_global} and {cfg.num_local}"
            )
        self.cfg = cfg
        self.sizes = [cfg.global_size] * cfg.num_global + [cfg.local_size] * cfg.num_local
        self.scales = [cfg.global_scale] * cfg.num_global + [cfg.local_scale] * cfg.num_local
        self.photometric = T.Compose(
            [
                T.RandomApply([T.ColorJitter(*cfg.jitter)], p=cfg.jitter_p),
                T.RandomGrayscale(p=cfg.grayscale_p),
                T.RandomApply([_GaussianBlur(cfg.blur_sigma)], p=cfg.blur_p),
                T.ToTensor(),
                T.Normalize(list(mean), list(std)),
            ]
        )

    def sample_boxes(self, image: Image.Image) -> torch.Tensor:
        """(num_crops, 4) crop boxes (x1, y1, x2, y2) in image pixels, obeying the overlap rule."""
        width, height = image.size
        area = width * height
        boxes = torch.zeros(len(self.sizes), 4)
        ratio = (3 / 4, 4 / 3)
        for i, scale in enumerate(self.scales):
            globals_before = boxes[: min(i, self.cfg.num_global)]
            needed = self.cfg.min_intersection * area * (2 if i < self.cfg.num_global else 1)
            for _ in range(self.cfg.max_tries):
                top, left, h, w = T.RandomResizedCrop.get_params(image, list(scale), list(ratio))
                box = torch.tensor([left, top, left + w, top + h], dtype=torch.float32)
                if bool((intersection_area(box, globals_before) > needed).all()):
                    boxes[i] = box
                    break
            else:
                kind = "global" if i < self.cfg.num_global else "local"
                raise CropError(
                    f"could not draw {kind} crop {i} (scale {tuple(scale)}) overlapping every global crop "
                    f"(scale {tuple(self.cfg.global_scale)}) by more than {needed / area:.1%} of a {width}x{height} "
                    f"image in {self.cfg.max_tries} tries; raise the crop scales or lower crops.min_intersection"
                )
        return boxes

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        boxes = self.sample_boxes(image)
        crops = []
        for (x1, y1, x2, y2), size in zip(boxes.tolist(), self.sizes, strict=True):
            crop = TF.resized_crop(
                image,
                int(y1),
                int(x1),
                int(y2 - y1),
                int(x2 - x1),
                [size, size],
                T.InterpolationMode.BILINEAR,
                antialias=True,
            )
            crops.append(self.photometric(crop))
        in_global, in_crop = intersection_boxes(
            boxes, torch.tensor(self.sizes, dtype=torch.float32), self.cfg.num_global
        )
        return {"crops": crops, "boxes_global": in_global, "boxes_crop": in_crop}


def intersection_area(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Area of ``box`` (4,) ∩ each of ``others`` (n, 4): (n,)."""
    wh = (torch.minimum(box[2:], others[:, 2:]) - torch.maximum(box[:2], others[:, :2])).clamp_min(0)
    return wh[:, 0] * wh[:, 1]


def intersection_boxes(boxes: torch.Tensor, sizes: torch.Tensor, num_global: int) -> tuple[torch.Tensor, torch.Tensor]:
    """g∩v for global g and every v, in g's and in v's pixel frames: two (num_global, V, 4) tensors.

    ``boxes`` (V, 4) in image pixels; ``sizes`` (V,) the square side each crop is resized to.
    """
    inter = torch.cat(
        [
            torch.maximum(boxes[:num_global, None, :2], boxes[None, :, :2]),
            torch.minimum(boxes[:num_global, None, 2:], boxes[None, :, 2:]),
        ],
        dim=-1,
    )

    def in_frame(frame: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        origin = frame[..., :2].repeat(1, 1, 2)
        extent = (frame[..., 2:] - frame[..., :2]).repeat(1, 1, 2)
        return (inter - origin) * size[..., None] / extent

    return in_frame(boxes[:num_global, None], sizes[:num_global, None]), in_frame(boxes[None], sizes[None])


def derived_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integer keys (e.g. seed, epoch, index)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


class MultiCropDataset(Dataset):
    """Multi-crops of a dataset's images, indexed by ``(epoch, index)`` (see :class:`EpochSampler`).

    A sample's crops depend on (seed, epoch, index) alone - not on the process, worker or
    batch that draws it - so a run on N devices sees the same crops as a run on one, and a
    resumed run the same as an uninterrupted one.
    """

    def __init__(self, dataset: SegmentationDataset, transform: MultiCrop, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        image = self.dataset.load_image(self.dataset.samples[index])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.seed, epoch, index))
            return self.transform(image)


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (shuffled by seed + epoch, sharded by rank) yielding ``(epoch, index)``.

    Lightning calls ``set_epoch`` on it every epoch; passing the epoch along with the index
    is what lets :class:`MultiCropDataset` seed each sample without shared state.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in super().__iter__())
