"""Datasets: one interface (``create_dataset(name, root, split)``) over every supported layout.

Importing a dataset module registers it; every module is imported here so that the
registry lists them all.
"""
from . import ade20k, camvid, cityscapes, coco, folder, imagenet100, potsdam, voc  # noqa: F401  (registration)
from .base import DATASETS, IGNORE_INDEX, Sample, SegmentationDataset, create_dataset, list_datasets

__all__ = ["DATASETS", "IGNORE_INDEX", "Sample", "SegmentationDataset", "create_dataset", "list_datasets"]
