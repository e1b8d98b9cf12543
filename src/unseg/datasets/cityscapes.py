"""Cityscapes-27 (STEGO): the fine annotations' labelIds 7..33 as classes 0..26.

STEGO subtracts the first non-void labelId (7) and ignores what falls below 0, so the
void ids 0..6 (unlabeled, ego vehicle, rectification border, out of roi, static,
dynamic, ground) are ignored and every other labelId is a class, including those the
19-class benchmark ignores (parking, rail track, guard rail, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Sample, SegmentationDataset, apply_lookup, lookup_table, register_dataset, require

FIRST_CLASS_LABEL_ID = 7
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"


@register_dataset("cityscapes27")
class Cityscapes27(SegmentationDataset):
    class_names = (
        "road",
        "sidewalk",
        "parking",
        "rail track",
        "building",
        "wall",
        "fence",
        "guard rail",
        "bridge",
        "tunnel",
        "pole",
        "polegroup",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "caravan",
        "trailer",
        "train",
        "motorcycle",
        "bicycle",
    )
    splits = ("train", "val")
    layout = (
        "  ROOT/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        "  ROOT/gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png\n"
        "      labelIds: 7..33 -> classes 0..26, others ignored"
    )
    table = lookup_table({FIRST_CLASS_LABEL_ID + i: i for i in range(27)})

    def __init__(self, root: Path, split: str) -> None:
        images = require(root / "leftImg8bit" / split, self.layout)
        masks = require(root / "gtFine" / split, self.layout)
        samples = []
        for city in sorted(p for p in images.iterdir() if p.is_dir()):
            for path in sorted(city.glob(f"*{IMAGE_SUFFIX}")):
                stem = path.name[: -len(IMAGE_SUFFIX)]
                samples.append(Sample(stem, path, masks / city.name / f"{stem}{MASK_SUFFIX}"))
        super().__init__(root, split, samples)

    def decode_mask(self, raw: np.ndarray) -> np.ndarray:
        return apply_lookup(raw, self.table)
