"""The Leopart Lightning module: student, EMA teacher, queue, loss and schedules (``unseg docs methods``).

One training step: normalise both networks' prototypes; the teacher (EMA of the student,
no gradients) embeds the global crops; per assignment crop, Sinkhorn-Knopp over the
teacher's scores (prefixed by the queue once full) gives soft targets, RoI-aligned to
every overlap with another crop; the student predicts them from that crop's own view;
the teacher then moves towards the student (the authors' order: the student's weights
before this step's update).

Lightning keeps the optimiser, the lr schedule and the step; the weight-decay and
momentum schedules are functions of the step; the queue is saved from every process, and
checkpoints are written in Leopart's layout (:mod:`.checkpoint`). Randomness is seeded per
(seed, step, rank) for the step (drop-path, queue sampling), so resuming from an epoch's
checkpoint replays the uninterrupted run.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from ...backbones import Backbone, create_backbone
from ...config import dump_config
from ...features.saliency import foreground_mask
from .checkpoint import QUEUE_KEY, from_leopart_layout, to_leopart_layout
from .config import LeopartConfig, check_config
from .crops import derived_seed
from .model import LeopartNet, NetOutput, cosine_schedule, freeze_unused, leopart_loss, param_groups
from .sinkhorn import EmbeddingQueue, sinkhorn

__all__ = ["LeopartModule", "build_module"]

log = logging.getLogger(__name__)


class LeopartModule(L.LightningModule):
    """Student ``model`` and EMA ``teacher`` (both :class:`LeopartNet`), the queue, loss and schedules.

    The loss is computed in three stages the benchmark times separately:
    :meth:`forward_nets`, :meth:`targets` (Sinkhorn, queue, foreground masks) and
    :func:`leopart_loss` (RoI-align and cross-entropy).
    """

    def __init__(self, cfg: LeopartConfig, student: Backbone, teacher: Backbone) -> None:
        super().__init__()
        check_config(cfg)
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
            teacher = self.teacher(crops[: self.cfg.crops.num_global], saliency=self.cfg.mask != "all")
        return teacher, self.model(crops)[1]

    @torch.no_grad()
    def targets(self, teacher: NetOutput) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor] | None]:
        """Per assignment crop: Sinkhorn targets (B, K, h, w) and, unless mask 'all', the loss mask (B, 1, h, w)."""
        embeddings, scores, saliency = teacher
        targets: dict[int, torch.Tensor] = {}
        masks: dict[int, torch.Tensor] = {}  # none without saliency
        for i, c in enumerate(self.cfg.crops_for_assign):
            mask = None
            if saliency is not None:
                fg = foreground_mask(
                    saliency[c],
                    self.cfg.fg_keep_mass,
                    self.cfg.fg_blur_sigma,
                    self.cfg.fg_blur_kernel,
                    self.cfg.fg_max_dropped,
                )
                mask = fg if self.cfg.mask == "fg" else 1 - fg
                masks[c] = mask[:, None]
            targets[c] = self._assign(i, scores[c], embeddings[c], mask)
        return targets, (None if saliency is None else masks)

    def _assign(
        self, i: int, scores: torch.Tensor, embeddings: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, k, h, w = scores.shape
        rows = scores.permute(0, 2, 3, 1).reshape(-1, k).float()
        if self.queue is not None:
            if self.queue.full(i):  # past embeddings scored by the student's prototypes, as the authors
                rows = torch.cat([(self.queue.embeddings[i] @ self.model.prototypes.weight.T).float(), rows])
            pushed = embeddings.reshape(-1, embeddings.shape[-1]) if mask is None else embeddings[mask.bool()]
            self.queue.push(i, pushed, b * self.cfg.queue_push_per_image)
        q = sinkhorn(rows, self.cfg.sinkhorn_eps, self.cfg.sinkhorn_iterations)[-b * h * w :]
        return q.reshape(b, h, w, k).permute(0, 3, 1, 2)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        teacher, predictions = self.forward_nets(batch)
        targets, masks = self.targets(teacher)
        return leopart_loss(
            targets,
            predictions,
            batch["boxes_global"],
            batch["boxes_crop"],
            masks,
            self.stride,
            self.cfg.roi_size,
            self.cfg.temperature,
        )

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        for student, teacher in zip(self.model.parameters(), self.teacher.parameters(), strict=True):
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
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers makes one
        groups = {g["name"]: g for g in optimizer.param_groups}
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log_dict(
            {
                "train/momentum": momentum,
                "train/weight_decay": self.weight_decay(self.global_step),
                "train/lr_backbone": groups["backbone"]["lr"],
                "train/lr_head": groups["head"]["lr"],
            }
        )
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        decay = self.weight_decay(self.global_step)
        for group in optimizer.param_groups:
            if group["decay"]:
                group["weight_decay"] = decay

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = torch.optim.AdamW(
            param_groups(self.model, self.cfg.lr_backbone, self.cfg.lr_head, self.cfg.weight_decay)
        )
        scheduler = CosineAnnealingLR(optimizer, T_max=self.total_steps, eta_min=self.cfg.final_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leopart's key layout, and every process's queue (all processes run this hook)."""
        checkpoint["state_dict"] = to_leopart_layout(checkpoint["state_dict"])
        if self.queue is not None:
            gathered = {}
            for key, value in self.queue.state_dict().items():
                stacked = self.all_gather(value.to(self.device))
                assert isinstance(stacked, torch.Tensor)  # as it was given
                gathered[key] = (stacked if self.trainer.world_size > 1 else stacked[None]).cpu()
            checkpoint[QUEUE_KEY] = gathered  # (world_size, ...) per tensor

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = from_leopart_layout(checkpoint["state_dict"])
        saved = checkpoint.get(QUEUE_KEY)
        if self.queue is None or saved is None:
            return
        try:
            world, rank = self.trainer.world_size, self.global_rank
        except RuntimeError:  # not attached to a trainer (``load_from_checkpoint``): one process
            world, rank = 1, 0
        if len(saved["embeddings"]) == world:
            self.queue.load_state_dict({k: v[rank] for k, v in saved.items()})
        else:
            log.warning(
                "the checkpoint's queue comes from %d processes, this run has %d: it starts empty",
                len(saved["embeddings"]),
                world,
            )


def build_module(cfg: LeopartConfig) -> LeopartModule:
    """Student (initial ``weights``, drop-path) and teacher (its copy, no drop-path) in a module."""
    student = create_backbone(cfg.backbone, cfg.weights, download=cfg.download, drop_path_rate=cfg.drop_path_rate)
    teacher = create_backbone(cfg.backbone, "random", drop_path_rate=0.0)
    return LeopartModule(cfg, student, teacher)
