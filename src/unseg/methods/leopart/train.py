"""``train_leopart``: a Leopart fine-tuning run (``unseg docs methods``) from a config to a run folder.

The run is assembled from the package's parts: :mod:`.config` (settings), :mod:`.module`
(student, teacher, loss, schedules), :mod:`.data` (multi-crop batches), :mod:`.callbacks`
(validation, final weights) and :mod:`.checkpoint` (Leopart's layout), on the trainer
both methods share (:func:`unseg.methods.trainer.build_trainer`). Crops are seeded per
(seed, epoch, index) and each step per (seed, step, rank), so resuming from an epoch's
checkpoint replays the uninterrupted run.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ...config import require_accelerator, save_config
from ...datasets import create_dataset
from ...errors import ConfigError
from ..trainer import build_trainer, check_logger, check_run_folder, clear_run, load_resume
from .callbacks import OverclusteringValidation, SaveWeights
from .checkpoint import from_leopart_layout
from .config import LeopartConfig, check_config
from .crops import MultiCrop, MultiCropDataset
from .data import MultiCropData
from .module import LeopartModule, build_module

__all__ = ["train_leopart"]


def train_leopart(
    cfg: LeopartConfig,
    out_dir: str | Path = "runs/leopart",
    resume: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
) -> LeopartModule:
    """Fine-tune ``cfg.backbone`` with the Leopart loss on ``cfg.dataset`` for ``cfg.epochs`` epochs.

    ``out_dir`` receives ``config.yaml``, logs under ``logs/`` (``cfg.logger``), Lightning checkpoints
    every ``cfg.checkpoint_every_epochs`` epochs under ``checkpoints/`` (``last.ckpt`` links
    the newest; all in Leopart's layout) and, at the end, ``leopart.ckpt`` (weights only).
    ``resume``: a checkpoint path, or ``"last"``; it must exist (:func:`unseg.io.resume_checkpoint`) and
    fit this run's model (read safely, checked before ``config.yaml`` is written). A folder that holds
    a run is refused unless ``resume`` or ``overwrite`` (which replaces that run) is given.
    ``callbacks``: extra Lightning callbacks.
    """
    if cfg.root is None:
        raise ConfigError("key 'root' is not set: pass root=PATH, the training dataset's folder")
    check_config(cfg)
    check_logger(cfg.logger)
    resume = check_run_folder(out_dir, resume, overwrite)
    require_accelerator(cfg.accelerator)
    L.seed_everything(cfg.seed)
    dataset = create_dataset(cfg.dataset, cfg.root, cfg.split)
    processes = cfg.devices * cfg.num_nodes
    if len(dataset) // processes < cfg.batch_size:
        raise ConfigError(
            f"{cfg.dataset}/{cfg.split} has {len(dataset)} images: not one batch of "
            f"batch_size={cfg.batch_size} per process for {processes} process(es); lower key "
            f"'batch_size'"
        )
    module = build_module(cfg)
    loaded = (resume, load_resume(module, resume, from_leopart_layout)) if resume is not None else None
    backbone = module.model.backbone
    crops = MultiCropDataset(dataset, MultiCrop(cfg.crops, backbone.mean, backbone.std, backbone.stride), cfg.seed)
    out = Path(out_dir)
    own = [
        ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="{epoch:03d}",
            save_last="link",
            every_n_epochs=cfg.checkpoint_every_epochs,
            save_top_k=-1 if cfg.keep_checkpoints else 1,
            enable_version_counter=False,
        ),
        SaveWeights(out / "leopart.ckpt"),
    ]
    if cfg.val.root is not None:
        val = create_dataset(cfg.val.dataset, cfg.val.root, cfg.val.split)
        own.append(OverclusteringValidation(cfg.val, val, out, cfg.num_workers))
    trainer = build_trainer(
        out,
        cfg.logger,
        cfg.log_every,
        cfg.progress_bar,
        [*own, *callbacks],
        resume=loaded,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        sync_batchnorm=cfg.batchnorm == "sync",
        max_epochs=cfg.epochs,
    )
    if trainer.is_global_zero:
        if overwrite:
            clear_run(out)
        save_config(cfg, out / "config.yaml")
    with warnings.catch_warnings():  # frozen batch norm is in eval mode on purpose
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(
            module, datamodule=MultiCropData(crops, cfg.batch_size, cfg.num_workers, cfg.seed), ckpt_path=resume
        )
    return module
