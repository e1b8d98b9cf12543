"""ADE20K street parts (Leopart): the 1,983 street scenes with part annotations, 111 part classes.

Leopart selects, among the first 27,258 entries of the ADE20K 2021 index
(``index_ade20k.pkl``: 25,258 + 2,000 in its data module), the images whose scene is
"/street" and that hold at least one part, and evaluates on the first part level
(``<image>_parts_1.png``). Part masks store the ADE object class in their colour channels
(class = R / 10 * 256 + G, 0 = no part); Leopart keeps the 111 part classes below, in
ascending class order, and ignores every other pixel. There is a single split ("val");
Leopart uses the same images for fitting and evaluating its probes.

The index is a Python pickle (the official ADE20K file): only open dataset folders you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LayoutError
from .base import Sample, SegmentationDataset, apply_lookup, lookup_table, read_label_map, register_dataset, require

INDEX_FILE = "ADE20K_2021_17_01/index_ade20k.pkl"
NUM_INDEX_ENTRIES = 25258 + 2000
STREET_SCENE = "/street"
PART_LEVEL_SUFFIX = "_parts_1.png"
# Leopart data/ade20k/ade20kdata.py: every part class found in the selected images.
PART_CLASS_IDS = (
    50,
    51,
    54,
    83,
    101,
    112,
    135,
    136,
    144,
    175,
    184,
    211,
    213,
    277,
    320,
    495,
    543,
    544,
    580,
    582,
    626,
    665,
    772,
    774,
    776,
    777,
    781,
    783,
    785,
    840,
    859,
    860,
    876,
    890,
    904,
    909,
    934,
    938,
    1062,
    1063,
    1072,
    1081,
    1140,
    1145,
    1156,
    1180,
    1206,
    1212,
    1213,
    1249,
    1259,
    1277,
    1279,
    1280,
    1395,
    1397,
    1412,
    1428,
    1429,
    1430,
    1431,
    1439,
    1470,
    1540,
    1541,
    1564,
    1882,
    1883,
    1936,
    1951,
    1957,
    2052,
    2067,
    2103,
    2117,
    2118,
    2119,
    2120,
    2122,
    2130,
    2155,
    2156,
    2164,
    2190,
    2346,
    2370,
    2371,
    2376,
    2379,
    2421,
    2529,
    2564,
    2567,
    2570,
    2700,
    2742,
    2820,
    2828,
    2855,
    2884,
    2940,
    2978,
    3035,
    3050,
    3054,
    3056,
    3057,
    3063,
    3137,
    3153,
    3154,
)
INDEX_KEYS = ("filename", "folder", "scene", "objectIsPart", "objectnames")


@register_dataset("ade20k_parts")
class Ade20kStreetParts(SegmentationDataset):
    """Class names come from the index's ``objectnames`` (class k is entry k - 1); the
    class-level names are the ADE class ids, for use before a dataset is opened."""

    class_names = tuple(f"ade_class_{i}" for i in PART_CLASS_IDS)
    splits = ("val",)
    layout = (
        "  ROOT/ADE20K_2021_17_01/index_ade20k.pkl   the official ADE20K 2021 index (pickle)\n"
        "  ROOT/<index folder>/<index filename>.jpg   images, e.g. under\n"
        "      ROOT/ADE20K_2021_17_01/images/ADE/training/urban/street/\n"
        "  ROOT/<index folder>/<stem>_parts_1.png     first-level part masks, class = R / 10 * 256 + G"
    )
    table = lookup_table({class_id: i for i, class_id in enumerate(PART_CLASS_IDS)})

    def __init__(self, root: Path, split: str) -> None:
        index = read_index(require(root / INDEX_FILE, self.layout))
        self.class_names = tuple(str(index["objectnames"][i - 1]) for i in PART_CLASS_IDS)
        n = min(NUM_INDEX_ENTRIES, len(index["filename"]))
        has_parts = np.asarray(index["objectIsPart"])[:, :n].sum(axis=0) > 0
        samples = []
        for i in range(n):
            if has_parts[i] and index["scene"][i] == STREET_SCENE:
                image = root / index["folder"][i] / index["filename"][i]
                samples.append(Sample(image.stem, image, image.with_name(f"{image.stem}{PART_LEVEL_SUFFIX}")))
        super().__init__(root, split, samples)

    def read_mask(self, path: Path) -> np.ndarray:
        return read_label_map(path, modes=("RGB",))

    def decode_mask(self, raw: np.ndarray) -> np.ndarray:
        rgb = raw.astype(np.int64)
        return apply_lookup(rgb[..., 0] // 10 * 256 + rgb[..., 1], self.table)


def read_index(path: Path) -> dict[str, Any]:
    """The ADE20K index with the entries the selection needs, or a LayoutError naming the file."""
    try:
        with path.open("rb") as f:
            index = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as exc:
        raise LayoutError(f"ADE20K index {path} cannot be read ({exc!r})") from None
    missing = [key for key in INDEX_KEYS if not isinstance(index, dict) or key not in index]
    if missing or len(index["objectnames"]) < max(PART_CLASS_IDS):
        lacks = ", ".join(missing) or f"names for class ids up to {max(PART_CLASS_IDS)}"
        raise LayoutError(f"ADE20K index {path} lacks {lacks}; expected the official index_ade20k.pkl")
    return index
