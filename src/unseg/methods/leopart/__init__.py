"""Leopart (Ziegler & Asano, CVPR 2022; SPEC §2): dense self-supervised fine-tuning of any backbone.

``crops`` (multi-crop with intersection boxes), ``sinkhorn`` (Sinkhorn-Knopp and the
queue), ``model`` (student / teacher network, foreground masks, RoI-aligned loss,
schedules) and ``train`` (config, Lightning module, validation, ``train_leopart``).
"""
from .crops import CropConfig, CropError, EpochSampler, MultiCrop, MultiCropDataset
from .model import LeopartNet, cosine_schedule, leopart_loss
from .sinkhorn import EmbeddingQueue, sinkhorn
from .train import (LeopartConfig, LeopartModule, MultiCropData, OverclusteringValidation, ValConfig, build_module,
                    save_leopart, train_leopart)

__all__ = ["CropConfig", "CropError", "MultiCrop", "MultiCropDataset", "EpochSampler", "LeopartNet",
           "leopart_loss", "cosine_schedule", "sinkhorn", "EmbeddingQueue", "LeopartConfig",
           "ValConfig", "LeopartModule", "MultiCropData", "OverclusteringValidation", "build_module",
           "save_leopart", "train_leopart"]
