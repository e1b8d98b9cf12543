"""Every setting of a Leopart run, with the defaults of ``unseg docs methods`` ("Leopart fine-tuning").

Kept apart from the module and the entry point so a config can be read, checked and
written (``unseg configs``, ``config.yaml`` of a run) without building a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...defaults import INPUT_SIZE, MASK_SIZE
from ...errors import ConfigError
from ..trainer import TrainerSettings
from .crops import CropConfig

__all__ = ["ValConfig", "LeopartConfig", "check_config"]


@dataclass
class ValConfig:
    """In-training overclustering validation (``unseg docs methods``); off while ``root`` is unset.

    Every ``every_epochs`` epochs the teacher's backbone embeds the first ``num_images``
    images of the split (None: all) at ``input_size``, and :func:`evaluate_clustering` scores
    K in ``ks`` against masks of ``mask_size``. Default 320 images: the authors' 10 batches of 32.
    """

    dataset: str = "voc12"
    root: str | None = None
    split: str = "val"
    every_epochs: int = 1
    num_images: int | None = 320
    input_size: int = INPUT_SIZE
    mask_size: int = MASK_SIZE
    ks: list[int] = field(default_factory=lambda: [500, 300, 21])
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 32


@dataclass
class LeopartConfig(TrainerSettings):
    """Every setting of a Leopart run: the shared trainer section (:class:`unseg.methods.trainer.TrainerSettings`)
    and Leopart's own. Defaults: ``unseg docs methods``, else the authors' ImageNet-100 ViT-S/16 config.
    """

    # data
    dataset: str = "imagenet100"
    split: str = "train"
    crops: CropConfig = field(default_factory=CropConfig)
    # networks
    backbone: str = "dino_vits16"
    download: bool = False  # fetch hub weights when ``weights`` is unset
    drop_path_rate: float = 0.1  # student only; 0 for backbones without stochastic depth (resnet50)
    hidden_dim: int = 2048
    dim: int = 256
    num_prototypes: int = 300
    # targets and loss
    temperature: float = 0.1
    sinkhorn_eps: float = 0.05
    sinkhorn_iterations: int = 3
    crops_for_assign: list[int] = field(default_factory=lambda: [0, 1])  # global crops that give targets
    roi_size: int = 7
    mask: Literal["fg", "bg", "all"] = "fg"  # cells the loss counts: salient, the others, or all
    fg_keep_mass: float = 0.6
    fg_blur_sigma: float = 0.6
    fg_blur_kernel: int = 7
    fg_max_dropped: int = 2  # foreground components of at most this many tokens are dropped
    queue_length: int = 8192  # in all; each of N processes keeps length / N; 0 = no queue
    queue_push_per_image: int = 10
    # optimisation
    epochs: int = 50
    lr_backbone: float = 1e-5
    lr_head: float = 1e-4
    final_lr: float = 0.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.5
    momentum_teacher: float = 0.9995
    momentum_teacher_end: float = 1.0
    seed: int = 400
    num_workers: int = 8
    # trainer, beyond the shared section
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning's: "ddp" for several GPUs (its default), "ddp_spawn", ...
    # batch norm (CNN backbones; ViTs have none): "frozen" keeps the pretrained statistics (eval mode, affine
    # parameters still trained), as detection and segmentation fine-tuning does with small batches; "train" lets
    # small, colour-jittered crops overwrite the statistics the evaluation at full size uses; "sync" as "train"
    # with statistics synchronised across processes
    batchnorm: Literal["frozen", "train", "sync"] = "frozen"
    checkpoint_every_epochs: int = 5
    keep_checkpoints: bool = True  # keep every periodic checkpoint (the authors'), else only the latest
    log_every: int = 50
    val: ValConfig = field(default_factory=ValConfig)


def check_config(cfg: LeopartConfig) -> None:
    """Settings that are each valid alone but not together (the loader checks types and ranges per key)."""
    assign = cfg.crops_for_assign
    if not assign or len(set(assign)) != len(assign) or not all(0 <= c < cfg.crops.num_global for c in assign):
        raise ConfigError(
            f"key 'crops_for_assign' = {assign} must list distinct global crops 0..{cfg.crops.num_global - 1}"
        )
