"""Datasets: one interface (``create_dataset(name, root, split)``) over every supported layout.

Importing a dataset module registers it; every module is imported here so that the
registry lists them all.
"""

from . import ade20k, camvid, cityscapes, coco, folder, imagenet100, potsdam, voc  # noqa: F401  (registration)
from .base import DATASETS, IGNORE_INDEX, Sample, SegmentationDataset, create_dataset, list_datasets

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "Sample",
    "SegmentationDataset",
    "create_dataset",
    "list_datasets",
    "datasets_table",
]


def datasets_table(layout: bool = False) -> str:
    """Every dataset's classes and splits, one line each, and with ``layout`` the folders it expects
    (``unseg datasets``)."""
    lines = []
    for name in DATASETS.names():
        cls = DATASETS.get(name)
        lines.append(
            f"{name:16s} {len(cls.class_names):4d} classes  splits: {', '.join(cls.splits) or 'any sub-folder'}"
        )
        lines += [cls.layout] if layout else []
    return "\n".join(lines)
