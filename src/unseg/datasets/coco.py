"""COCO-Stuff with coarse labels: STEGO's COCO-Stuff-27 and Leopart's COCO-Stuff-15 / COCO-Thing-12.

All three merge COCO's fine categories into their supercategories. One table holds the
merge: STEGO's fine -> coarse map over the 182 COCO-Stuff ids (fine id = COCO category
id - 1; coarse 0-11 = thing supercategories, 12-26 = stuff supercategories). Leopart
builds its maps from the same supercategories in the annotation JSON files, sorted by
name, so its two tables are derived here from STEGO's by renaming and re-indexing; no
JSON is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (
    Sample,
    SegmentationDataset,
    apply_lookup,
    list_images,
    lookup_table,
    read_id_list,
    register_dataset,
    require,
)

# STEGO src/data.py, Coco.fine_to_coarse: entry i is the coarse class of fine id i (0..181).
FINE_TO_COARSE_27 = (
    9,
    11,
    11,
    11,
    11,
    11,
    11,
    11,
    11,
    8,
    8,
    8,
    8,
    8,
    8,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    6,
    6,
    6,
    6,
    6,
    6,
    6,
    6,
    10,
    10,
    10,
    10,
    10,
    10,
    10,
    10,
    10,
    10,
    5,
    5,
    5,
    5,
    5,
    5,
    5,
    5,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    3,
    3,
    3,
    3,
    3,
    3,
    3,
    3,
    3,
    3,
    0,
    0,
    0,
    0,
    0,
    0,
    1,
    1,
    1,
    1,
    1,
    1,
    4,
    4,
    4,
    4,
    4,
    4,
    4,
    4,
    17,
    17,
    22,
    20,
    20,
    22,
    15,
    25,
    16,
    13,
    12,
    12,
    17,
    17,
    23,
    15,
    15,
    17,
    15,
    21,
    15,
    25,
    13,
    13,
    13,
    13,
    13,
    22,
    26,
    14,
    14,
    15,
    22,
    21,
    21,
    24,
    20,
    22,
    15,
    17,
    16,
    15,
    22,
    24,
    21,
    17,
    25,
    16,
    21,
    17,
    22,
    16,
    21,
    21,
    25,
    21,
    26,
    21,
    24,
    20,
    17,
    14,
    21,
    26,
    15,
    23,
    20,
    21,
    24,
    15,
    24,
    22,
    25,
    15,
    20,
    17,
    17,
    22,
    14,
    18,
    18,
    18,
    18,
    18,
    18,
    18,
    26,
    26,
    19,
    19,
    24,
)
# STEGO's class names for the 27 coarse ids (train_segmentation.py, get_class_labels).
COARSE_27_NAMES = (
    "electronic",
    "appliance",
    "food",
    "furniture",
    "indoor",
    "kitchen",
    "accessory",
    "animal",
    "outdoor",
    "person",
    "sports",
    "vehicle",
    "ceiling",
    "floor",
    "food",
    "furniture",
    "rawmaterial",
    "textile",
    "wall",
    "window",
    "building",
    "ground",
    "plant",
    "sky",
    "solid",
    "structural",
    "water",
)
FIRST_STUFF_COARSE = 12
# COCO JSON supercategory names where they differ from STEGO's spelling (stuff only).
JSON_STUFF_NAMES = {"food": "food-stuff", "furniture": "furniture-stuff", "rawmaterial": "raw-material"}
# Leopart: class id = rank of the supercategory name, stuff without "other" / things only.
STUFF_15_NAMES = tuple(sorted(JSON_STUFF_NAMES.get(n, n) for n in COARSE_27_NAMES[FIRST_STUFF_COARSE:]))
THING_12_NAMES = tuple(sorted(COARSE_27_NAMES[:FIRST_STUFF_COARSE]))


def _coarse_27_table() -> np.ndarray:
    """Stored fine id (0..181) -> coarse id; 255 (unlabelled) and anything else -> ignore."""
    return lookup_table(dict(enumerate(FINE_TO_COARSE_27)))


def _stuff_15_table() -> np.ndarray:
    """COCO stuff category id (92..182) -> Leopart stuff class; 0 (unlabelled), 183 ("other",
    where the stuff pixel maps put things) and anything else -> ignore."""
    mapping = {}
    for fine, coarse in enumerate(FINE_TO_COARSE_27):
        if coarse >= FIRST_STUFF_COARSE:
            name = COARSE_27_NAMES[coarse]
            mapping[fine + 1] = STUFF_15_NAMES.index(JSON_STUFF_NAMES.get(name, name))
    return lookup_table(mapping)


def _thing_12_table() -> np.ndarray:
    """COCO thing category id (1..91) -> Leopart thing class; 0 (unlabelled) and stuff ids -> ignore."""
    return lookup_table(
        {
            fine + 1: THING_12_NAMES.index(COARSE_27_NAMES[coarse])
            for fine, coarse in enumerate(FINE_TO_COARSE_27)
            if coarse < FIRST_STUFF_COARSE
        }
    )


class CoarseCoco(SegmentationDataset):
    """A COCO variant whose stored category ids are merged into coarse classes through ``table``."""

    table: np.ndarray

    def decode_mask(self, raw: np.ndarray) -> np.ndarray:
        return apply_lookup(raw, self.table)


@register_dataset("cocostuff27")
class CocoStuff27(CoarseCoco):
    """STEGO's COCO-Stuff-27 on its curated image lists (train: the full coarse list, val: IIC's
    "_7" list, as STEGO's ContrastiveSegDataset picks them)."""

    class_names = COARSE_27_NAMES
    splits = ("train", "val")
    layout = (
        "  ROOT/images/{train2017,val2017}/<id>.jpg\n"
        "  ROOT/annotations/{train2017,val2017}/<id>.png   COCO-Stuff-164k label maps:\n"
        "      fine ids 0..181 (COCO category id - 1), 255 = unlabelled\n"
        "  ROOT/curated/train2017/Coco164kFull_Stuff_Coarse.txt   train image ids\n"
        "  ROOT/curated/val2017/Coco164kFull_Stuff_Coarse_7.txt   val image ids"
    )
    image_lists = {"train": "Coco164kFull_Stuff_Coarse.txt", "val": "Coco164kFull_Stuff_Coarse_7.txt"}
    table = _coarse_27_table()

    def __init__(self, root: Path, split: str) -> None:
        folder = f"{split}2017"
        ids = read_id_list(root / "curated" / folder / self.image_lists[split], self.layout)
        images = require(root / "images" / folder, self.layout)
        masks = require(root / "annotations" / folder, self.layout)
        super().__init__(root, split, [Sample(i, images / f"{i}.jpg", masks / f"{i}.png") for i in ids])


class LeopartCoco(CoarseCoco):
    """Leopart's COCO evaluation layout: every image of ``coco/images/{split}2017`` with the
    same-stem PNG of ``mask_folder``, which stores COCO category ids."""

    splits = ("train", "val")
    mask_folder: str  # relative to ROOT, with a {split} field

    def __init__(self, root: Path, split: str) -> None:
        images = require(root / "coco" / "images" / f"{split}2017", self.layout)
        masks = require(root / self.mask_folder.format(split=split), self.layout)
        super().__init__(root, split, [Sample(p.stem, p, masks / f"{p.stem}.png") for p in list_images(images)])


@register_dataset("cocostuff15")
class CocoStuff15(LeopartCoco):
    """COCO-Stuff-15: the 15 stuff supercategories; things ("other") and unlabelled pixels ignored."""

    class_names = STUFF_15_NAMES
    mask_folder = "annotations/annotations/stuff_annotations/stuff_{split}2017_pixelmaps"
    layout = (
        "  ROOT/coco/images/{train2017,val2017}/*.jpg\n"
        "  ROOT/annotations/annotations/stuff_annotations/stuff_{train,val}2017_pixelmaps/<stem>.png\n"
        "      COCO stuff pixel maps: 92..182 stuff ids, 183 = other (things), 0 = unlabelled"
    )
    table = _stuff_15_table()


@register_dataset("cocothing12")
class CocoThing12(LeopartCoco):
    """COCO-Thing-12: the 12 thing supercategories; stuff and unlabelled pixels ignored."""

    class_names = THING_12_NAMES
    mask_folder = "annotations/panoptic_annotations/semantic_segmentation_{split}2017"
    layout = (
        "  ROOT/coco/images/{train2017,val2017}/*.jpg\n"
        "  ROOT/annotations/panoptic_annotations/semantic_segmentation_{train,val}2017/<stem>.png\n"
        "      panoptic semantic maps: 1..91 thing ids, 92..200 stuff ids, 0 = unlabelled"
    )
    table = _thing_12_table()
