"""Callbacks of a Leopart run: in-training overclustering validation and the final weights file."""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ...backbones import Backbone
from ...datasets import SegmentationDataset
from ...evaluation.clustering import evaluate_clustering
from ...features.source import load_split
from .checkpoint import save_leopart
from .config import ValConfig
from .module import LeopartModule

__all__ = ["OverclusteringValidation", "SaveWeights"]

log = logging.getLogger(__name__)


class OverclusteringValidation(Callback):
    """Overclustering of the teacher backbone's features on a labelled split, on rank 0, logged as
    ``val/K=<k>_miou``; the features go to a temporary cache under ``workdir``."""

    def __init__(self, cfg: ValConfig, dataset: SegmentationDataset, workdir: str | Path, num_workers: int) -> None:
        self.cfg, self.workdir, self.num_workers = cfg, Path(workdir), num_workers
        self.dataset = copy.copy(dataset)
        self.dataset.samples = dataset.samples[: cfg.num_images]

    def evaluate(self, backbone: Backbone, device: torch.device | str) -> dict[str, float]:
        modes = {m: m.training for m in backbone.modules()}  # per module: batch norm may be frozen
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix="val-features-") as tmp:
            val = load_split(
                backbone,
                self.dataset,
                self.cfg.input_size,
                self.cfg.mask_size,
                cache_root=tmp,
                batch_size=self.cfg.batch_size,
                device=str(device),
                num_workers=self.num_workers,
                rank=0,
                world_size=1,
                progress=False,
            )
            assert val.masks is not None  # loaded with a mask size
            results = evaluate_clustering(val.cache, val.masks, val.num_classes, ks=self.cfg.ks, seeds=self.cfg.seeds)
        for m, training in modes.items():
            m.train(training)
        return {f"val/K={r.k}_miou": r.miou_mean for r in results}

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.cfg.every_epochs:
            return
        assert isinstance(module, LeopartModule)  # the callback of Leopart's training
        if trainer.is_global_zero:
            scores = self.evaluate(module.teacher.backbone, module.device)
            module.log_dict(scores, rank_zero_only=True)
            log.info("epoch %d: %s", trainer.current_epoch, scores)
        trainer.strategy.barrier("leopart-validation")


class SaveWeights(Callback):
    """Write :func:`save_leopart` at the end of training, from the training process of rank 0."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        assert isinstance(module, LeopartModule)  # the callback of Leopart's training
        if trainer.is_global_zero:
            save_leopart(module, self.path)
