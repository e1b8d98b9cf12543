"""PASCAL VOC 2012 segmentation: train 1,464 / trainaug 10,582 (SBD-augmented) / val 1,449.

Two folder layouts are recognised, so the same root works with Leopart's data and with
a plain VOCdevkit download. Stored masks are class ids already (palette indices in the
devkit PNGs, grey values in SegmentationClassAug), 255 = object boundary / ignore, so the
default ``decode_mask`` applies.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LayoutError
from .base import Sample, SegmentationDataset, read_id_list, register_dataset, require

# Where each layout may sit under the given root, and the folder that identifies it.
LEOPART_BASES = ("", "VOCSegmentation")
LEOPART_MARKER = "sets"
DEVKIT_BASES = ("", "VOC2012", "VOCdevkit/VOC2012")
DEVKIT_MARKER = "ImageSets/Segmentation"
# SBD-aug setups name the 10,582-image list either way (DeepLab ports: trainaug.txt,
# VainF/DeepLabV3Plus-Pytorch: train_aug.txt), both next to train.txt.
TRAINAUG_LISTS = ("trainaug.txt", "train_aug.txt")


@register_dataset("voc12")
class PascalVOC12(SegmentationDataset):
    """Leopart's layout (its VOCDataModule reads ``DATA_DIR/VOCSegmentation``) or VOCdevkit;
    a root holding both is read as Leopart's.

    In Leopart's layout train and trainaug masks come from SegmentationClassAug and val
    masks from SegmentationClass, as Leopart's VOCDataset does; in the devkit layout train
    and val use SegmentationClass and trainaug uses SegmentationClassAug.
    """

    class_names = (
        "background",
        "aeroplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    )
    splits = ("train", "trainaug", "val")
    layout = (
        "  either Leopart's layout (ROOT may also contain it as ROOT/VOCSegmentation/):\n"
        "    ROOT/images/*.jpg\n"
        "    ROOT/SegmentationClass/*.png      val masks, class ids, 255 = ignore\n"
        "    ROOT/SegmentationClassAug/*.png   train and trainaug masks\n"
        "    ROOT/sets/{train,trainaug,val}.txt  image ids, one per line\n"
        "  or the VOCdevkit layout (ROOT may also be the VOC2012 folder itself):\n"
        "    ROOT/VOCdevkit/VOC2012/JPEGImages/*.jpg\n"
        "    ROOT/VOCdevkit/VOC2012/SegmentationClass/*.png     train and val masks (palette PNGs)\n"
        "    ROOT/VOCdevkit/VOC2012/SegmentationClassAug/*.png  trainaug masks (SBD-augmented)\n"
        "    ROOT/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt and trainaug.txt (or train_aug.txt)"
    )

    def __init__(self, root: Path, split: str) -> None:
        leopart = _find_base(root, LEOPART_BASES, LEOPART_MARKER)
        devkit = _find_base(root, DEVKIT_BASES, DEVKIT_MARKER)
        if leopart is not None:
            ids = read_id_list(leopart / LEOPART_MARKER / f"{split}.txt", self.layout)
            images = require(leopart / "images", self.layout)
            mask_folder = "SegmentationClass" if split == "val" else "SegmentationClassAug"
            masks = require(leopart / mask_folder, self.layout)
        elif devkit is not None:
            ids = read_id_list(_devkit_split_file(devkit / DEVKIT_MARKER, split), self.layout)
            images = require(devkit / "JPEGImages", self.layout)
            mask_folder = "SegmentationClassAug" if split == "trainaug" else "SegmentationClass"
            masks = require(devkit / mask_folder, self.layout)
        else:
            looked = [
                str(root / base / marker)
                for bases, marker in ((LEOPART_BASES, LEOPART_MARKER), (DEVKIT_BASES, DEVKIT_MARKER))
                for base in bases
            ]
            raise LayoutError(
                f"{root} fits neither VOC layout: none of {', '.join(looked)} exists; expected layout:\n{self.layout}"
            )
        super().__init__(root, split, [Sample(i, images / f"{i}.jpg", masks / f"{i}.png") for i in ids])


def _devkit_split_file(lists: Path, split: str) -> Path:
    """The devkit's list of ``split``; for trainaug the first of its usual names that exists."""
    if split != "trainaug":
        return lists / f"{split}.txt"
    return next((lists / n for n in TRAINAUG_LISTS if (lists / n).exists()), lists / TRAINAUG_LISTS[0])


def _find_base(root: Path, bases: tuple[str, ...], marker: str) -> Path | None:
    """The first ``root/base`` holding the folder ``marker``, or None."""
    return next((root / base for base in bases if (root / base / marker).is_dir()), None)
