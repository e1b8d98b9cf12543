"""Potsdam-3 (STEGO, data prepared by IIC): 200x200 tiles of the ISPRS Potsdam orthophotos.

IIC's preparation stores each tile as MATLAB files: ``imgs/<id>.mat`` holds ``img``, an
HxWx4 uint8 RGB+IR array, and ``gt/<id>.mat`` holds ``gt``, HxW ids 0..5 (road, building,
low vegetation, tree, car, clutter). STEGO merges them into 3 classes and, like STEGO,
the image here is the first three (RGB) channels; the IR channel is dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat
from scipy.io.matlab import MatReadError

from ..errors import ImageError
from .base import Sample, SegmentationDataset, apply_lookup, lookup_table, read_id_list, register_dataset, require

# STEGO's split names -> IIC's split files (STEGO src/data.py, Potsdam.split_files).
SPLIT_FILES = {
    "train": ("labelled_train.txt",),
    "val": ("labelled_test.txt",),
    "train+val": ("labelled_train.txt", "labelled_test.txt"),
    "unlabelled_train": ("unlabelled_train.txt",),
}
UNLABELLED_SPLITS = ("unlabelled_train",)


@register_dataset("potsdam3")
class Potsdam3(SegmentationDataset):
    class_names = ("roads and cars", "buildings and clutter", "trees and vegetation")
    splits = tuple(SPLIT_FILES)
    layout = (
        "  ROOT/imgs/<id>.mat   variable 'img': HxWx4 uint8 (RGB + IR)\n"
        "  ROOT/gt/<id>.mat     variable 'gt': HxW ids 0..5 (labelled tiles only)\n"
        "  ROOT/labelled_train.txt, ROOT/labelled_test.txt, ROOT/unlabelled_train.txt   tile ids, one per line\n"
        "  splits: train = labelled_train, val = labelled_test, train+val, unlabelled_train (no masks)"
    )
    # road & car -> 0, building & clutter -> 1, low vegetation & tree -> 2 (STEGO's fine_to_coarse)
    table = lookup_table({0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2})

    def __init__(self, root: Path, split: str) -> None:
        ids = [i for name in SPLIT_FILES[split] for i in read_id_list(root / name, self.layout)]
        images = require(root / "imgs", self.layout)
        masks = None if split in UNLABELLED_SPLITS else require(root / "gt", self.layout)
        super().__init__(
            root,
            split,
            [Sample(i, images / f"{i}.mat", masks / f"{i}.mat" if masks is not None else None) for i in ids],
        )

    def load_image(self, sample: Sample) -> Image.Image:
        array = read_mat(sample.image, "img", "image")
        if array.ndim != 3 or array.shape[2] < 3 or array.dtype != np.uint8:
            raise ImageError(
                f"image {sample.image} holds a {array.dtype} array of shape {array.shape}; "
                "expected HxWx4 uint8 (RGB + IR)"
            )
        return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), "RGB")

    def read_mask(self, path: Path) -> np.ndarray:
        array = read_mat(path, "gt", "mask")
        if array.ndim != 2:
            raise ImageError(f"mask {path} holds an array of shape {array.shape}; expected HxW class ids")
        return array

    def decode_mask(self, raw: np.ndarray) -> np.ndarray:
        return apply_lookup(raw, self.table)


def read_mat(path: Path, variable: str, kind: str) -> np.ndarray:
    """One variable of a MATLAB file, or an ImageError naming the file (``kind``: image or mask)."""
    try:
        contents = loadmat(path)
    except FileNotFoundError:
        raise ImageError(f"{kind} {path} does not exist") from None
    except (MatReadError, ValueError, TypeError, OSError) as exc:
        raise ImageError(f"{kind} {path} is corrupt or not a MATLAB file ({exc})") from None
    if variable not in contents:
        raise ImageError(f"{kind} {path} has no variable {variable!r}")
    return np.asarray(contents[variable])
