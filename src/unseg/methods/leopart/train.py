"""Leopart fine-tuning (SPEC §2) with Lightning: config, module, data, in-training validation, ``train_leopart``.

One training step: normalise both networks' prototypes; the teacher (EMA of the student,
no gradients) embeds the global crops; per assignment crop, Sinkhorn-Knopp over the
teacher's scores (prefixed by the queue once full) gives soft targets, RoI-aligned to
every overlap with another crop; the student predicts them from that crop's own view;
the teacher then moves towards the student (the authors' order: the student's weights
before this step's update).

Checkpoints are Leopart's Lightning layout (``state_dict``: ``model.*`` student and
``teacher.*``, each the backbone's keys plus ``projection_head.*`` and
``prototypes.weight``), so ``create_backbone(name, weights=ckpt)`` loads them (the student,
as Leopart's evaluation does, unless ``role="teacher"``). Lightning keeps the optimiser, the lr schedule and the step;
the weight-decay and momentum schedules are functions of the step; the queue is saved
from every process. Randomness is seeded per (seed, epoch, index) for the crops and per
(seed, step, rank) for the step (drop-path, queue sampling), so resuming from an epoch's
checkpoint replays the uninterrupted run.
"""
from __future__ import annotations

import copy
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader

from ...backbones import Backbone, create_backbone
from ...config import dump_config, require_accelerator, save_config
from ...datasets import SegmentationDataset, create_dataset
from ...errors import ConfigError
from ...evaluation.clustering import evaluate_clustering
from ...features import extract_features
from ...features.cache import cached_masks
from ...io import resume_checkpoint, save_torch
from .crops import CropConfig, EpochSampler, MultiCrop, MultiCropDataset, derived_seed
from ...features.saliency import foreground_mask
from .model import LeopartNet, NetOutput, cosine_schedule, freeze_unused, leopart_loss, param_groups
from .sinkhorn import EmbeddingQueue, sinkhorn

__all__ = ["LeopartConfig", "ValConfig", "LeopartModule", "MultiCropData", "OverclusteringValidation",
           "train_leopart", "build_module", "save_leopart", "SaveWeights", "to_leopart_layout", "from_leopart_layout"]

log = logging.getLogger(__name__)


@dataclass
class ValConfig:
    """In-training overclustering validation (SPEC §2); off while ``root`` is unset.

    Every ``every_epochs`` epochs the teacher's backbone embeds the first ``num_images``
    images of the split (None: all) at ``input_size``, and :func:`evaluate_clustering` scores
    K in ``ks`` against masks of ``mask_size``. Default 320 images: the authors' 10 batches of 32.
    """

    dataset: str = "voc12"
    root: str | None = None
    split: str = "val"
    every_epochs: int = 1
    num_images: int | None = 320
    input_size: int = 448
    mask_size: int = 100
    ks: list[int] = field(default_factory=lambda: [500, 300, 21])
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 32


@dataclass
class LeopartConfig:
    """Every setting of a Leopart run. Defaults: SPEC §2, else the authors' ImageNet-100 ViT-S/16 config."""

    # data
    dataset: str = "imagenet100"
    root: str | None = None
    split: str = "train"
    crops: CropConfig = field(default_factory=CropConfig)
    # networks
    backbone: str = "dino_vits16"
    weights: str | None = None  # initial weights (any SPEC §1 layout) or "random"
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
    batch_size: int = 32  # per process
    lr_backbone: float = 1e-5
    lr_head: float = 1e-4
    final_lr: float = 0.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.5
    momentum_teacher: float = 0.9995
    momentum_teacher_end: float = 1.0
    seed: int = 400
    num_workers: int = 8
    # trainer
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning's: "ddp" for several GPUs (its default), "ddp_spawn", ...
    precision: str = "32-true"
    # batch norm (CNN backbones; ViTs have none): "frozen" keeps the pretrained statistics (eval mode, affine
    # parameters still trained), as detection and segmentation fine-tuning does with small batches; "train" lets
    # small, colour-jittered crops overwrite the statistics the evaluation at full size uses; "sync" as "train"
    # with statistics synchronised across processes
    batchnorm: Literal["frozen", "train", "sync"] = "frozen"
    checkpoint_every_epochs: int = 5
    keep_checkpoints: bool = True  # keep every periodic checkpoint (the authors'), else only the latest
    log_every: int = 50
    progress_bar: bool = True
    val: ValConfig = field(default_factory=ValConfig)


_INTERNAL_BACKBONE = re.compile(r"^(model|teacher)\.backbone\.model\.")
_LEOPART_BACKBONE = re.compile(r"^(model|teacher)\.(?!projection_head\.|prototypes\.)")


def to_leopart_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module keys ``model.backbone.model.X`` -> Leopart's ``model.X`` (and the same for ``teacher``)."""
    return {_INTERNAL_BACKBONE.sub(r"\1.", k): v for k, v in state.items()}


def from_leopart_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_LEOPART_BACKBONE.sub(r"\1.backbone.model.", k): v for k, v in state.items()}


class LeopartModule(L.LightningModule):
    """Student ``model`` and EMA ``teacher`` (both :class:`LeopartNet`), the queue, loss and schedules.

    The loss is computed in three stages the benchmark times separately:
    :meth:`forward_nets`, :meth:`targets` (Sinkhorn, queue, foreground masks) and
    :func:`leopart_loss` (RoI-align and cross-entropy).
    """

    def __init__(self, cfg: LeopartConfig, student: Backbone, teacher: Backbone) -> None:
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        unused = freeze_unused(student)
        if unused:
            log.info("not trained (unused by dense features): %s", ", ".join(unused))
        self.model = LeopartNet(student, cfg.hidden_dim, cfg.dim, cfg.num_prototypes)
        self.teacher = LeopartNet(teacher, cfg.hidden_dim, cfg.dim, cfg.num_prototypes)
        self.teacher.load_state_dict(self.model.state_dict())
        self.teacher.requires_grad_(False)
        self.queue = self._new_queue(1)
        self.save_hyperparameters(dump_config(cfg))
        self.train()  # backbones come in eval mode; both networks train in train mode (the teacher as DINO's)

    def train(self, mode: bool = True) -> LeopartModule:
        """Train mode, except batch-norm layers when ``cfg.batchnorm`` is "frozen"."""
        super().train(mode)
        if self.cfg.batchnorm == "frozen":
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _new_queue(self, world_size: int) -> EmbeddingQueue | None:
        if not self.cfg.queue_length:
            return None
        return EmbeddingQueue(len(self.cfg.crops_for_assign), self.cfg.queue_length // world_size, self.cfg.dim)

    @property
    def stride(self) -> int:
        return self.model.backbone.stride

    # -- schedules: functions of the step, so a resumed run continues them exactly --
    @property
    def total_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)

    def momentum(self, step: int) -> float:
        return cosine_schedule(self.cfg.momentum_teacher, self.cfg.momentum_teacher_end, step, self.total_steps)

    def weight_decay(self, step: int) -> float:
        return cosine_schedule(self.cfg.weight_decay, self.cfg.weight_decay_end, step, self.total_steps)

    # -- the loss --
    def forward_nets(self, batch: dict[str, Any]) -> tuple[NetOutput, list[torch.Tensor]]:
        """Teacher output on the global crops, student scores on every crop."""
        self.model.normalise_prototypes()
        self.teacher.normalise_prototypes()
        crops = batch["crops"]
        with torch.no_grad():
            teacher = self.teacher(crops[:self.cfg.crops.num_global], saliency=self.cfg.mask != "all")
        return teacher, self.model(crops)[1]

    @torch.no_grad()
    def targets(self, teacher: NetOutput) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor] | None]:
        """Per assignment crop: Sinkhorn targets (B, K, h, w) and, unless mask 'all', the loss mask (B, 1, h, w)."""
        embeddings, scores, saliency = teacher
        targets: dict[int, torch.Tensor] = {}
        masks: dict[int, torch.Tensor] | None = None if saliency is None else {}
        for i, c in enumerate(self.cfg.crops_for_assign):
            mask = None
            if saliency is not None:
                fg = foreground_mask(saliency[c], self.cfg.fg_keep_mass, self.cfg.fg_blur_sigma,
                                     self.cfg.fg_blur_kernel, self.cfg.fg_max_dropped)
                mask = fg if self.cfg.mask == "fg" else 1 - fg
                masks[c] = mask[:, None]
            targets[c] = self._assign(i, scores[c], embeddings[c], mask)
        return targets, masks

    def _assign(self, i: int, scores: torch.Tensor, embeddings: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        b, k, h, w = scores.shape
        rows = scores.permute(0, 2, 3, 1).reshape(-1, k).float()
        if self.queue is not None:
            if self.queue.full(i):  # past embeddings scored by the student's prototypes, as the authors
                rows = torch.cat([(self.queue.embeddings[i] @ self.model.prototypes.weight.T).float(), rows])
            pushed = embeddings.reshape(-1, embeddings.shape[-1]) if mask is None else embeddings[mask.bool()]
            self.queue.push(i, pushed, b * self.cfg.queue_push_per_image)
        q = sinkhorn(rows, self.cfg.sinkhorn_eps, self.cfg.sinkhorn_iterations)[-b * h * w:]
        return q.reshape(b, h, w, k).permute(0, 3, 1, 2)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        teacher, predictions = self.forward_nets(batch)
        targets, masks = self.targets(teacher)
        return leopart_loss(targets, predictions, batch["boxes_global"], batch["boxes_crop"], masks, self.stride,
                            self.cfg.roi_size, self.cfg.temperature)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        for student, teacher in zip(self.model.parameters(), self.teacher.parameters()):
            teacher.mul_(momentum).add_(student.detach(), alpha=1 - momentum)

    # -- Lightning hooks --
    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:
            self.queue = self._new_queue(self.trainer.world_size)

    def on_fit_start(self) -> None:
        if self.queue is not None:
            self.queue.to(self.device)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(derived_seed(self.cfg.seed, self.global_step, self.global_rank))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        momentum = self.momentum(self.global_step)
        self.update_teacher(momentum)
        groups = {g["name"]: g for g in self.optimizers().param_groups}
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log_dict({"train/momentum": momentum, "train/weight_decay": self.weight_decay(self.global_step),
                       "train/lr_backbone": groups["backbone"]["lr"], "train/lr_head": groups["head"]["lr"]})
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        decay = self.weight_decay(self.global_step)
        for group in optimizer.param_groups:
            if group["decay"]:
                group["weight_decay"] = decay

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(param_groups(self.model, self.cfg.lr_backbone, self.cfg.lr_head,
                                                   self.cfg.weight_decay))
        scheduler = CosineAnnealingLR(optimizer, T_max=self.total_steps, eta_min=self.cfg.final_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leopart's key layout, and every process's queue (all processes run this hook)."""
        checkpoint["state_dict"] = to_leopart_layout(checkpoint["state_dict"])
        if self.queue is not None:
            gathered = {}
            for key, value in self.queue.state_dict().items():
                value = self.all_gather(value.to(self.device))
                gathered[key] = (value if self.trainer.world_size > 1 else value[None]).cpu()
            checkpoint["leopart_queue"] = gathered  # (world_size, ...) per tensor

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = from_leopart_layout(checkpoint["state_dict"])
        saved = checkpoint.get("leopart_queue")
        if self.queue is None or saved is None:
            return
        world, rank = (self.trainer.world_size, self.global_rank) if self._trainer is not None else (1, 0)
        if len(saved["embeddings"]) == world:
            self.queue.load_state_dict({k: v[rank] for k, v in saved.items()})
        else:
            log.warning("the checkpoint's queue comes from %d processes, this run has %d: it starts empty",
                        len(saved["embeddings"]), world)


def _check(cfg: LeopartConfig) -> None:
    assign = cfg.crops_for_assign
    if not assign or len(set(assign)) != len(assign) or not all(0 <= c < cfg.crops.num_global for c in assign):
        raise ConfigError(f"key 'crops_for_assign' = {assign} must list distinct global crops "
                          f"0..{cfg.crops.num_global - 1}")


class MultiCropData(L.LightningDataModule):
    """Batches of multi-crops; the sampler shards by rank itself (Lightning's is turned off)."""

    def __init__(self, data: MultiCropDataset, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        self.data, self.batch_size, self.num_workers, self.seed = data, batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(self.data, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                               shuffle=True, seed=self.seed, drop_last=True)
        return DataLoader(self.data, self.batch_size, sampler=sampler, drop_last=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())


class OverclusteringValidation(Callback):
    """Overclustering of the teacher backbone's features on a labelled split, on rank 0, logged as
    ``val/K=<k>_miou``; the features go to a temporary cache under ``workdir``."""

    def __init__(self, cfg: ValConfig, dataset: SegmentationDataset, workdir: str | Path, num_workers: int) -> None:
        self.cfg, self.workdir, self.num_workers = cfg, Path(workdir), num_workers
        self.dataset = copy.copy(dataset)
        self.dataset.samples = dataset.samples[:cfg.num_images]

    def evaluate(self, backbone: Backbone, device: torch.device | str) -> dict[str, float]:
        modes = {m: m.training for m in backbone.modules()}  # per module: batch norm may be frozen
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix="val-features-") as tmp:
            cache = extract_features(backbone, self.dataset, self.cfg.input_size, cache_root=tmp,
                                     batch_size=self.cfg.batch_size, device=str(device), num_workers=self.num_workers,
                                     rank=0, world_size=1, progress=False)
            masks = cached_masks(cache, self.dataset, (self.cfg.mask_size,) * 2)
            results = evaluate_clustering(cache, masks, self.dataset.num_classes, ks=self.cfg.ks, seeds=self.cfg.seeds)
        for m, training in modes.items():
            m.train(training)
        return {f"val/K={r.k}_miou": r.miou_mean for r in results}

    def on_train_epoch_end(self, trainer: L.Trainer, module: LeopartModule) -> None:
        if (trainer.current_epoch + 1) % self.cfg.every_epochs:
            return
        if trainer.is_global_zero:
            scores = self.evaluate(module.teacher.backbone, module.device)
            module.log_dict(scores, rank_zero_only=True)
            log.info("epoch %d: %s", trainer.current_epoch, scores)
        trainer.strategy.barrier("leopart-validation")


def build_module(cfg: LeopartConfig) -> LeopartModule:
    """Student (initial ``weights``, drop-path) and teacher (its copy, no drop-path) in a module."""
    student = create_backbone(cfg.backbone, cfg.weights, download=cfg.download, drop_path_rate=cfg.drop_path_rate)
    teacher = create_backbone(cfg.backbone, "random", drop_path_rate=0.0)
    return LeopartModule(cfg, student, teacher)


def save_leopart(module: LeopartModule, path: str | Path) -> None:
    """Weights only, in Leopart's layout, with the run's config: what ``--weights`` and timm read."""
    state = {k: v.detach().cpu() for k, v in to_leopart_layout(module.state_dict()).items()}
    save_torch({"state_dict": state, "hyper_parameters": dump_config(module.cfg),
                "epoch": module.current_epoch, "global_step": module.global_step}, path)


class SaveWeights(Callback):
    """Write :func:`save_leopart` at the end of training, from the training process of rank 0."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, module: LeopartModule) -> None:
        if trainer.is_global_zero:
            save_leopart(module, self.path)


def train_leopart(cfg: LeopartConfig, out_dir: str | Path = "runs/leopart", resume: str | Path | None = None,
                  callbacks: Sequence[Callback] = ()) -> LeopartModule:
    """Fine-tune ``cfg.backbone`` with the Leopart loss on ``cfg.dataset`` for ``cfg.epochs`` epochs.

    ``out_dir`` receives ``config.yaml``, CSV logs under ``logs/``, Lightning checkpoints
    every ``cfg.checkpoint_every_epochs`` epochs under ``checkpoints/`` (``last.ckpt`` links
    the newest; all in Leopart's layout) and, at the end, ``leopart.ckpt`` (weights only).
    ``resume``: a checkpoint path, or ``"last"``; it must exist (:func:`unseg.io.resume_checkpoint`).
    ``callbacks``: extra Lightning callbacks.
    """
    if cfg.root is None:
        raise ConfigError("key 'root' is not set: pass root=PATH, the training dataset's folder")
    _check(cfg)
    resume = resume_checkpoint(resume, out_dir)
    require_accelerator(cfg.accelerator)
    L.seed_everything(cfg.seed)
    dataset = create_dataset(cfg.dataset, cfg.root, cfg.split)
    processes = cfg.devices * cfg.num_nodes
    if len(dataset) // processes < cfg.batch_size:
        raise ConfigError(f"{cfg.dataset}/{cfg.split} has {len(dataset)} images: not one batch of "
                          f"batch_size={cfg.batch_size} per process for {processes} process(es); lower key "
                          f"'batch_size'")
    module = build_module(cfg)
    backbone = module.model.backbone
    crops = MultiCropDataset(dataset, MultiCrop(cfg.crops, backbone.mean, backbone.std, backbone.stride), cfg.seed)
    out = Path(out_dir)
    own = [ModelCheckpoint(dirpath=out / "checkpoints", filename="{epoch:03d}", save_last="link",
                           every_n_epochs=cfg.checkpoint_every_epochs, save_top_k=-1 if cfg.keep_checkpoints else 1),
           SaveWeights(out / "leopart.ckpt")]
    if cfg.val.root is not None:
        val = create_dataset(cfg.val.dataset, cfg.val.root, cfg.val.split)
        own.append(OverclusteringValidation(cfg.val, val, out, cfg.num_workers))
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
        precision=cfg.precision, sync_batchnorm=cfg.batchnorm == "sync", max_epochs=cfg.epochs,
        use_distributed_sampler=False, default_root_dir=out, logger=CSVLogger(out, name="logs"),
        log_every_n_steps=cfg.log_every, enable_progress_bar=cfg.progress_bar, enable_model_summary=False,
        callbacks=[*own, *callbacks],
    )
    if trainer.is_global_zero:
        save_config(cfg, out / "config.yaml")
    with warnings.catch_warnings():  # frozen batch norm is in eval mode on purpose
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(module, datamodule=MultiCropData(crops, cfg.batch_size, cfg.num_workers, cfg.seed),
                    ckpt_path=resume)
    return module
