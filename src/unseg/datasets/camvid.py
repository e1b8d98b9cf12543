"""CamVid, SegNet's 11-class split (the layout of ``shared/data/camvid``)."""

from __future__ import annotations

from pathlib import Path

from .base import Sample, SegmentationDataset, read_id_list, register_dataset, require


@register_dataset("camvid")
class CamVid(SegmentationDataset):
    class_names = (
        "sky",
        "building",
        "pole",
        "road",
        "pavement",
        "tree",
        "sign_symbol",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    )
    splits = ("train", "val", "test")
    layout = (
        "  ROOT/{split}/*.png        RGB images\n"
        "  ROOT/{split}annot/*.png   8-bit label maps, same names (11 = unlabelled -> ignored)\n"
        "  ROOT/{split}.txt          image ids (file stems), one per line"
    )

    def __init__(self, root: Path, split: str) -> None:
        ids = read_id_list(root / f"{split}.txt", self.layout)
        images = require(root / split, self.layout)
        masks = require(root / f"{split}annot", self.layout)
        super().__init__(root, split, [Sample(i, images / f"{i}.png", masks / f"{i}.png") for i in ids])
