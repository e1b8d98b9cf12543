"""Leopart (Ziegler & Asano, CVPR 2022; ``unseg docs methods``): dense self-supervised fine-tuning of any backbone.

``crops`` (multi-crop with intersection boxes), ``sinkhorn`` (Sinkhorn-Knopp and the
queue), ``model`` (student / teacher network, foreground masks, RoI-aligned loss,
schedules), ``config`` (settings), ``module`` (the Lightning module), ``data`` (the data
module), ``callbacks`` (validation, final weights), ``checkpoint`` (Leopart's layout) and
``train`` (``train_leopart``).
"""

from .callbacks import OverclusteringValidation, SaveWeights
from .checkpoint import from_leopart_layout, save_leopart, to_leopart_layout
from .config import LeopartConfig, ValConfig
from .crops import CropConfig, CropError, EpochSampler, MultiCrop, MultiCropDataset
from .data import MultiCropData
from .model import LeopartNet, cosine_schedule, leopart_loss
from .module import LeopartModule, build_module
from .sinkhorn import EmbeddingQueue, sinkhorn
from .train import train_leopart

__all__ = [
    "CropConfig",
    "CropError",
    "MultiCrop",
    "MultiCropDataset",
    "EpochSampler",
    "LeopartNet",
    "leopart_loss",
    "cosine_schedule",
    "sinkhorn",
    "EmbeddingQueue",
    "LeopartConfig",
    "ValConfig",
    "LeopartModule",
    "MultiCropData",
    "OverclusteringValidation",
    "build_module",
    "save_leopart",
    "SaveWeights",
    "to_leopart_layout",
    "from_leopart_layout",
    "train_leopart",
]
