"""Training a STEGO head (``unseg docs methods``) with Lightning, on cached backbone features or on images.

The backbone is frozen, so its features of a training image never change: the study's
speed-up (``unseg docs methods``) trains on a :class:`~unseg.features.FeatureCache` and never runs the
backbone. The images path runs the frozen backbone inside the module instead. Both feed
the same head, loss and probes; a batch is ``{"x", "x_pos"[, "label"]}`` where ``x`` is a
feature map (cache) or an image (images) and ``x_pos`` its kNN positive.

Lightning's checkpoints of :class:`StegoModule` are in STEGO's layout (``unseg docs checkpoints``), so
:func:`~unseg.methods.stego.checkpoint.load_stego` reads them as well as the final
``stego.ckpt``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import functional as TF

from ...backbones import Backbone, create_backbone
from ...config import require_accelerator, save_config
from ...datasets.base import IGNORE_INDEX, SegmentationDataset
from ...errors import ConfigError, SettingError
from ...features.cache import FeatureCache
from ...io import save_json
from ..leopart.crops import derived_seed
from ..trainer import TrainerSettings, build_trainer, check_logger, check_run_folder, clear_run, load_resume
from .checkpoint import BACKBONE_PREFIX, save_stego, stego_hparams
from .knn import KNN_K
from .loss import CorrespondenceConfig, correspondence_terms
from .model import ClusterProbe, LinearProbe, StegoHead
from .shifts import NEIGHBORS, auto_shifts, resolve_shifts

__all__ = [
    "StegoConfig",
    "StegoModule",
    "CachedPairs",
    "ImagePairs",
    "StepSampler",
    "PairsData",
    "train_stego",
    "check_config",
]


@dataclass
class StegoConfig(TrainerSettings):
    """Every setting of a STEGO run: the shared trainer section (:class:`unseg.methods.trainer.TrainerSettings`)
    and STEGO's own. Defaults: ``unseg docs methods``, else the authors' ``train_config.yml``."""

    # data: what the pipeline builds the training cache (or image dataset) and kNN table from;
    # train_stego itself receives them built and checks only ``data_source``
    dataset: str = "cocostuff27"
    train_split: str = "train"
    val_split: str = "val"
    data_source: Literal["cache", "images"] = "cache"
    five_crop: bool = True
    crop_ratio: float = 0.5
    input_size: int = 224
    val_input_size: int = 320
    backbone: str = "dino_vits8"
    # model
    n_classes: int = 27
    extra_clusters: int = 0
    dim: int = 70
    dropout: float = 0.1
    # training only: F (the feature correlation) reads Dropout2d(dropout) of the backbone features,
    # a draw separate from the head's own two, as in the authors' featurizer (`unseg docs evaluation`)
    correlation_dropout: bool = True
    loss: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)
    knn_k: int = KNN_K
    num_neighbors: int = NEIGHBORS  # a positive is drawn from kNN neighbours 1..num_neighbors
    # optimisation
    lr_head: float = 5e-4
    lr_probes: float = 5e-3
    max_steps: int = 7000
    # trainer, beyond the shared section
    checkpoint_every: int = 400
    deterministic: bool = True


def check_config(cfg: StegoConfig) -> None:
    """Settings that are each valid alone but not together (the loader checks types and ranges per key)."""
    if cfg.knn_k <= cfg.num_neighbors:
        raise ConfigError(
            f"key 'knn_k' = {cfg.knn_k} must be more than key 'num_neighbors' = {cfg.num_neighbors}: "
            f"a positive is drawn from the kNN neighbours 1..num_neighbors (0 is the image itself)"
        )


class _Pairs(Dataset):
    """Item i and a positive drawn uniformly from its kNN neighbours 1..num_neighbors (0 is i itself)."""

    def __init__(self, n: int, knn: np.ndarray, num_neighbors: int) -> None:
        knn = np.asarray(knn)
        if knn.ndim != 2 or len(knn) != n:
            raise ValueError(f"kNN table of shape {knn.shape} does not fit {n} images: expected ({n}, k)")
        if knn.shape[1] <= num_neighbors:
            raise ValueError(
                f"kNN table has {knn.shape[1]} columns; drawing from neighbours 1..{num_neighbors} "
                f"needs more than {num_neighbors}"
            )
        if knn.min() < 0 or knn.max() >= n:
            raise ValueError(f"kNN table holds indices outside 0..{n - 1}")
        self.knn, self.num_neighbors = knn.astype(np.int64), num_neighbors

    def __len__(self) -> int:
        return len(self.knn)

    def positive(self, i: int, seed: int | None = None) -> int:
        """A neighbour of i drawn from ``seed`` (a :class:`StepSampler` key's: the same in a resumed
        run and in any worker), or from torch's global generator when indexed by i alone."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return int(self.knn[i, int(torch.randint(1, self.num_neighbors + 1, (), generator=generator))])


def _split_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """(index, positive's seed) of a dataset key: an index, or a :class:`StepSampler` ``(index, seed)``."""
    return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)


class StepSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, seed)`` keys whose every draw is a function of (seed, epoch), not of a generator's state.

    An epoch is a seeded permutation (rank r of ``world_size`` takes every world_size-th
    image; the rest of a batch is dropped), each key carries the seed of its positive's draw,
    and an epoch's iteration starts at the batch of step ``position()`` (the trainer's global
    step). So a run resumed from a checkpoint in the middle of an epoch draws exactly the
    batches the uninterrupted run drew from that step on, as Leopart's sampler does per epoch.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, position: Callable[[], int], rank: int = 0, world_size: int = 1
    ) -> None:
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position
        self.rank, self.world_size = rank, world_size
        self.per_epoch = n // (batch_size * world_size)
        if self.per_epoch == 0:
            raise SettingError(
                f"{n} training images do not fill one batch of batch_size={batch_size} on each of "
                f"{world_size} process(es); lower batch_size"
            )

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        epoch, start = divmod(self.position(), self.per_epoch)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(derived_seed(self.seed, epoch)))
        mine = order[: self.per_epoch * self.batch_size * self.world_size][self.rank :: self.world_size].tolist()
        size = self.batch_size
        return iter(
            [
                [(i, derived_seed(self.seed, epoch, i)) for i in mine[b * size : (b + 1) * size]]
                for b in range(start, self.per_epoch)
            ]
        )


class PairsData(L.LightningDataModule):
    """Training batches in :class:`StepSampler` order, sharded by rank (Lightning's distributed sampler is off)."""

    def __init__(self, pairs: _Pairs, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        self.pairs, self.batch_size, self.num_workers, self.seed = pairs, batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None  # Lightning attaches it before it asks for the loader
        sampler = StepSampler(
            len(self.pairs),
            self.batch_size,
            self.seed,
            lambda: trainer.global_step,
            trainer.global_rank,
            trainer.world_size,
        )
        return DataLoader(
            self.pairs,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )


class CachedPairs(_Pairs):
    """``{"x": features (D, h, w), "x_pos": a kNN positive's features[, "label": (H, W) int64]}`` from a cache."""

    def __init__(
        self, cache: FeatureCache, knn: np.ndarray, num_neighbors: int = NEIGHBORS, masks: np.ndarray | None = None
    ) -> None:
        super().__init__(len(cache), knn, num_neighbors)
        if masks is not None and len(masks) != len(cache):
            raise ValueError(f"{len(masks)} masks for {len(cache)} cached images")
        self.cache, self.masks = cache, masks

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, seed = _split_key(key)
        item = {
            "x": torch.from_numpy(self.cache.features(i)),
            "x_pos": torch.from_numpy(self.cache.features(self.positive(i, seed))),
        }
        if self.masks is not None:
            item["label"] = torch.from_numpy(self.masks[i].astype(np.int64))
        return item


class ImagePairs(_Pairs):
    """Images (and masks) resized on the short side and center-cropped to ``size`` (STEGO's training loader)."""

    def __init__(
        self,
        dataset: SegmentationDataset,
        knn: np.ndarray,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_neighbors: int = NEIGHBORS,
    ) -> None:
        super().__init__(len(dataset), knn, num_neighbors)
        self.dataset, self.size, self.mean, self.std = dataset, size, list(mean), list(std)

    def _image(self, i: int) -> tuple[Image.Image, torch.Tensor]:
        image = self.dataset.load_image(self.dataset.samples[i])
        crop = TF.center_crop(TF.resize(image, self.size), self.size)
        return image, TF.normalize(TF.to_tensor(crop), self.mean, self.std)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, seed = _split_key(key)
        image, x = self._image(i)
        item = {"x": x, "x_pos": self._image(self.positive(i, seed))[1]}
        sample = self.dataset.samples[i]
        if sample.mask is not None:
            mask = Image.fromarray(self.dataset.load_mask(sample, image.size))
            mask = TF.center_crop(TF.resize(mask, self.size, TF.InterpolationMode.NEAREST), self.size)
            item["label"] = torch.from_numpy(np.array(mask, dtype=np.int64))
        return item


class StegoModule(L.LightningModule):
    """Head + probes; with ``backbone`` the batches are images, else cached feature maps.

    One Adam with two parameter groups (head ``lr_head``; both probes ``lr_probes``) makes
    the same updates as the authors' separate Adams, since Adam's state is per parameter,
    and keeps Lightning's ``global_step`` at one per batch (under manual optimisation it
    counts every optimiser's step). The probes see detached codes, so they never shape the
    head; the linear probe trains only when batches carry labels.
    """

    def __init__(
        self, cfg: StegoConfig, feat_dim: int, backbone: Backbone | None = None, head: nn.Conv2d | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # a fixed ``head`` (the study's raw / PCA / random-projection baselines) is frozen:
        # only the probes train on its codes, with the same losses and optimiser
        self.fixed_head = head is not None
        self.net = head.requires_grad_(False) if head is not None else StegoHead(feat_dim, cfg.dim, cfg.dropout)
        dim = head.out_channels if head is not None else cfg.dim
        self.cluster_probe = ClusterProbe(dim, cfg.n_classes + cfg.extra_clusters)
        self.linear_probe = LinearProbe(dim, cfg.n_classes)
        self.backbone = backbone.eval().requires_grad_(False) if backbone is not None else None
        # no parameters: the checkpoint layout is unchanged; off in eval mode like any dropout
        self.correlation_dropout = nn.Dropout2d(cfg.dropout) if cfg.correlation_dropout else nn.Identity()
        self.save_hyperparameters(stego_hparams(cfg.n_classes, dim, feat_dim, cfg))

    def train(self, mode: bool = True) -> StegoModule:
        """The frozen backbone stays in eval mode (no dropout / drop-path) while the head trains."""
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of images, or cached features as they are."""
        if self.backbone is None:
            return x
        with torch.no_grad():
            return self.backbone(x)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every loss term and code similarity of a batch; ``loss/total`` is what is minimised.

        Random draws in the authors' order: per image set, the head's two dropouts then the
        correlation dropout (image, then positive), then the loss's coordinates and partners.
        """
        feats = self.encode(batch["x"])
        code = self.net(feats)
        out: dict[str, torch.Tensor] = {}
        total = code.new_zeros(())
        if not self.fixed_head:
            signal = self.correlation_dropout(feats)
            feats_pos = self.encode(batch["x_pos"])
            code_pos = self.net(feats_pos)
            signal_pos = self.correlation_dropout(feats_pos)
            terms = correspondence_terms(signal, signal_pos, code, code_pos, self.cfg.loss)
            total = terms.total(self.cfg.loss)
            out = {
                "loss/pos_intra": terms.intra,
                "loss/pos_inter": terms.inter,
                "loss/neg_inter": terms.neg,
                "cd/pos_intra": terms.intra_sim,
                "cd/pos_inter": terms.inter_sim,
                "cd/neg_inter": terms.neg_sim,
                "loss/correspondence": total,
            }
        code = code.detach()
        out["loss/cluster"] = self.cluster_probe.loss(code)
        total = total + out["loss/cluster"]
        if "label" in batch:
            label = batch["label"]
            logits = F.interpolate(self.linear_probe(code), size=label.shape[-2:], mode="bilinear", align_corners=False)
            valid = (label != IGNORE_INDEX).sum().clamp_min(1)  # an all-ignored batch costs 0, not NaN
            out["loss/linear"] = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX, reduction="sum") / valid
            total = total + out["loss/linear"]
        out["loss/total"] = total
        return out

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """The step's draws (dropout, the loss's coordinates and partners) are seeded by (seed, step,
        rank), as Leopart's: a run resumed at a checkpoint makes the uninterrupted run's draws."""
        torch.manual_seed(derived_seed(self.cfg.seed, self.global_step, self.global_rank))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch)
        self.log_dict({k: v.detach() for k, v in out.items() if k != "loss/total"}, on_step=True)
        self.log("loss/total", out["loss/total"].detach(), on_step=True, prog_bar=True)
        return out["loss/total"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        probes = [*self.cluster_probe.parameters(), *self.linear_probe.parameters()]
        groups = [{"params": probes, "lr": self.cfg.lr_probes}]
        if not self.fixed_head:
            groups.insert(0, {"params": self.net.parameters(), "lr": self.cfg.lr_head})
        return torch.optim.Adam(groups)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """STEGO's layout: the backbone's keys under ``net.model.`` rather than ``backbone.model.``."""
        checkpoint["state_dict"] = {_rename(k, "backbone.", "net."): v for k, v in checkpoint["state_dict"].items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.module_keys(checkpoint["state_dict"])

    @staticmethod
    def module_keys(state: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's state dict (STEGO's layout) under this module's key names."""
        return {_rename(k, BACKBONE_PREFIX, "backbone.model."): v for k, v in state.items()}


def _rename(key: str, old: str, new: str) -> str:
    return new + key[len(old) :] if key.startswith(old) else key


def train_stego(
    cfg: StegoConfig,
    data: FeatureCache | SegmentationDataset,
    knn: np.ndarray,
    masks: np.ndarray | None = None,
    backbone: Backbone | None = None,
    out_dir: str | Path = "runs/stego",
    resume: str | Path | None = None,
    head: nn.Conv2d | None = None,
    overwrite: bool = False,
) -> StegoModule:
    """Train a STEGO head for ``cfg.max_steps`` batches and write ``out_dir/stego.ckpt``.

    ``data``: a FeatureCache of the training images (``masks``, optional (N, H, W) label
    maps in cache order, train the linear probe) or a SegmentationDataset (images path;
    ``backbone`` defaults to ``create_backbone(cfg.backbone, cfg.weights)``; its own masks
    train the linear probe). ``knn``: (N, k) neighbour table of the same images, column 0
    the image itself (:func:`unseg.methods.stego.knn.knn_indices`). ``out_dir`` receives
    ``config.yaml``, logs under ``logs/`` (``cfg.logger``), ``checkpoints/last.ckpt`` every
    ``cfg.checkpoint_every`` steps, and ``stego.ckpt`` (with the backbone on the images
    path). ``resume``: a checkpoint path, or ``"last"``, to continue a run; it must exist
    (:func:`unseg.io.resume_checkpoint`) and fit this run's model (read safely, checked before
    ``config.yaml`` is written), and the resumed run ends equal to an uninterrupted one. A folder
    that holds a run is refused unless ``resume`` or ``overwrite`` (which replaces that run) is
    given (:func:`unseg.methods.trainer.check_run_folder`). ``head``: a fixed 1x1 conv
    (:func:`unseg.methods.projections.projection_head`) whose codes only the probes learn; no
    ``stego.ckpt`` is written for it.
    """
    source = "cache" if isinstance(data, FeatureCache) else "images"
    if source != cfg.data_source:
        raise ValueError(
            f"config says data_source={cfg.data_source!r} but train_stego got a {type(data).__name__} ({source})"
        )
    if masks is not None and source == "images":
        raise ValueError("masks go with cached features; on the images path the dataset's own masks are used")
    out = Path(out_dir)
    check_logger(cfg.logger)
    if np.ndim(knn) == 2 and np.shape(knn)[1] <= cfg.num_neighbors:
        raise ConfigError(
            f"the kNN table has {np.shape(knn)[1]} columns; key 'num_neighbors' = {cfg.num_neighbors} "
            f"draws from neighbours 1..{cfg.num_neighbors}, so it needs more (key 'knn_k')"
        )
    resume = check_run_folder(out, resume, overwrite)
    require_accelerator(cfg.accelerator)
    L.seed_everything(cfg.seed, workers=True)
    if isinstance(data, FeatureCache):
        pairs: _Pairs = CachedPairs(data, knn, cfg.num_neighbors, masks)
        feat_dim, backbone = data.dim, None
    else:
        backbone = backbone if backbone is not None else create_backbone(cfg.backbone, cfg.weights)
        pairs = ImagePairs(data, knn, cfg.input_size, backbone.mean, backbone.std, cfg.num_neighbors)
        feat_dim = backbone.embed_dim
    if len(pairs) // cfg.devices < cfg.batch_size:
        raise ConfigError(
            f"{len(pairs)} training images do not fill one batch of batch_size={cfg.batch_size} on "
            f"each of {cfg.devices} device(s); lower key 'batch_size'"
        )
    shift_record: dict[str, Any] = {}
    if auto_shifts(cfg.loss) and head is None:  # a fixed head never reads the loss
        if not isinstance(data, FeatureCache):
            raise ConfigError(
                f"shift(s) {', '.join(auto_shifts(cfg.loss))} set to 'auto' are measured on cached "
                "features: use data_source: cache, or give numbers"
            )
        loss, shift_record = resolve_shifts(cfg.loss, data, knn, cfg.num_neighbors, cfg.batch_size, seed=cfg.seed)
        cfg = replace(cfg, loss=loss)
    module = StegoModule(cfg, feat_dim, backbone, head)
    loaded = (resume, load_resume(module, resume, StegoModule.module_keys)) if resume is not None else None
    trainer = build_trainer(
        out,
        cfg.logger,
        cfg.log_every,
        cfg.progress_bar,
        [
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                every_n_train_steps=cfg.checkpoint_every,
                save_top_k=0,
                save_last=True,
                enable_version_counter=False,
            )
        ],
        resume=loaded,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy="ddp" if cfg.devices > 1 else "auto",
        precision=cfg.precision,
        max_steps=cfg.max_steps,
        max_epochs=-1,
        # "warn": grid_sample's CUDA backward has no deterministic kernel; everything else is
        deterministic="warn" if cfg.deterministic else False,
    )
    if trainer.is_global_zero:
        if overwrite:
            clear_run(out)
        save_config(cfg, out / "config.yaml")
        if shift_record:
            save_json(shift_record, out / "shifts.json")
    with warnings.catch_warnings():  # StepSampler does resume mid-epoch, which Lightning cannot see
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(module, datamodule=PairsData(pairs, cfg.batch_size, cfg.num_workers, cfg.seed), ckpt_path=resume)
    if trainer.is_global_zero and head is None:
        assert isinstance(module.net, StegoHead)  # no fixed head: the one trained
        save_stego(out / "stego.ckpt", module.net, module.cluster_probe, module.linear_probe, cfg, module.backbone)
    return module
