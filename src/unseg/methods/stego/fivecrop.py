"""STEGO's five-crop preprocessing (``unseg docs methods``), done once and stored as an image folder.

STEGO trains on COCO-Stuff and Cityscapes through five crops of every image: the four
corners and the center, each ``crop_ratio`` (0.5) of the image's height and width
(torchvision ``five_crop``, as the authors' ``crop_datasets.py``). Crops only cut, never
resample, so masks keep their class ids and 255 = ignore exactly. The crops are written
once under ``out_root`` as the ``folder`` dataset's layout and read back through it::

    images/<id>_c0.png ... <id>_c4.png   top-left, top-right, bottom-left, bottom-right, center
    masks/<id>_c0.png  ... <id>_c4.png   class ids, 255 = ignore (labelled datasets only)
    five_crop.json                       source dataset and crop ratio
    DONE                                 every crop written

Unlike STEGO (JPEG crops, labels stored +1), images are lossless PNGs and masks keep
the project's encoding. Each file is written under a temporary name and renamed, a
crop's mask before its image, so an interrupted run resumes at the first missing image.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from torchvision.transforms.functional import five_crop

from ...datasets.base import SegmentationDataset, create_dataset
from ...errors import CacheError
from ...io import atomic_path, save_json

__all__ = ["five_crop_dataset", "crop_ids"]

NUM_CROPS = 5


def crop_ids(sample_id: str) -> list[str]:
    """File stems of one image's crops; ``/`` in nested ids (e.g. ``wnid/name``) becomes ``__``."""
    stem = sample_id.replace("/", "__")
    return [f"{stem}_c{i}" for i in range(NUM_CROPS)]


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _check_settings(out_root: Path, settings: dict[str, object]) -> None:
    """A folder of crops belongs to one source and ratio; reusing it for another is an error."""
    path = out_root / "five_crop.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            raise CacheError(
                f"five-crop folder {out_root} holds crops of {old}, not {settings}; remove it or choose another folder"
            )
        return
    save_json(settings, path)


def five_crop_dataset(
    dataset: SegmentationDataset, out_root: str | Path, crop_ratio: float = 0.5
) -> SegmentationDataset:
    """Write (once; resumable) the five crops of every image and mask, and return them as a dataset.

    The result is the ``folder`` dataset over ``out_root`` with ``dataset``'s class names
    and split, ids ``<id>_c0`` .. ``<id>_c4``. A corrupt source image raises ImageError
    naming its file.
    """
    if not 0 < crop_ratio <= 1:
        raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
    out_root = Path(out_root)
    images, masks = out_root / "images", out_root / "masks"
    labelled = dataset.has_masks
    _check_settings(
        out_root,
        {
            "dataset": dataset.name,
            "root": str(dataset.root.resolve()),
            "split": dataset.split,
            "num_images": len(dataset),
            "crop_ratio": crop_ratio,
        },
    )
    if not (out_root / "DONE").exists():
        for sample in dataset.samples:
            stems = crop_ids(sample.id)
            if all((images / f"{s}.png").exists() for s in stems):
                continue
            image = dataset.load_image(sample)
            size = [int(image.height * crop_ratio), int(image.width * crop_ratio)]
            if min(size) < 1:
                raise ValueError(
                    f"image {sample.image} ({image.width}x{image.height}) is too small for crops of ratio {crop_ratio}"
                )
            mask_crops = (
                five_crop(Image.fromarray(dataset.load_mask(sample, image.size)), size)
                if labelled
                else [None] * NUM_CROPS
            )
            for stem, crop, mask in zip(stems, five_crop(image, size), mask_crops, strict=True):
                if (images / f"{stem}.png").exists():
                    continue
                if mask is not None:
                    _save_png(mask, masks / f"{stem}.png")
                _save_png(crop, images / f"{stem}.png")
        save_json({"num_crops": NUM_CROPS * len(dataset)}, out_root / "DONE")
    cropped = create_dataset(
        "folder", images, dataset.split, masks=masks if labelled else None, num_classes=dataset.num_classes or None
    )
    cropped.class_names = dataset.class_names
    return cropped
