"""Leopart checkpoints in the authors' Lightning layout (``unseg docs checkpoints``), written atomically.

Layout (a Lightning checkpoint's ``state_dict``)::

    state_dict
      model.*                     the student: the backbone's own keys (timm / DINO names)
      model.projection_head.*     its projection head
      model.prototypes.weight     its prototypes (num_prototypes, dim)
      teacher.*                   the EMA teacher, the same keys
    leopart_queue                 Lightning checkpoints only: every process's queue, (world_size, ...) per tensor

In memory the module keeps each backbone one level down (``model.backbone.model.*``);
the renaming happens here, so ``create_backbone(name, weights=ckpt)`` and timm read the
files directly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...config import dump_config
from ...io import save_torch

if TYPE_CHECKING:
    from .module import LeopartModule

__all__ = ["QUEUE_KEY", "to_leopart_layout", "from_leopart_layout", "save_leopart"]

QUEUE_KEY = "leopart_queue"

_INTERNAL_BACKBONE = re.compile(r"^(model|teacher)\.backbone\.model\.")
_LEOPART_BACKBONE = re.compile(r"^(model|teacher)\.(?!projection_head\.|prototypes\.)")


def to_leopart_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module keys ``model.backbone.model.X`` -> Leopart's ``model.X`` (and the same for ``teacher``)."""
    return {_INTERNAL_BACKBONE.sub(r"\1.", k): v for k, v in state.items()}


def from_leopart_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Leopart's ``model.X`` -> the module's ``model.backbone.model.X``: the inverse of :func:`to_leopart_layout`."""
    return {_LEOPART_BACKBONE.sub(r"\1.backbone.model.", k): v for k, v in state.items()}


def save_leopart(module: LeopartModule, path: str | Path) -> None:
    """Weights only, in Leopart's layout, with the run's config: what ``--weights`` and timm read."""
    state = {k: v.detach().cpu() for k, v in to_leopart_layout(module.state_dict()).items()}
    save_torch(
        {
            "state_dict": state,
            "hyper_parameters": dump_config(module.cfg),
            "epoch": module.current_epoch,
            "global_step": module.global_step,
        },
        path,
    )
