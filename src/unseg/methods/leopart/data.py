"""The Lightning data module of a Leopart run: batches of multi-crops in a seeded, resumable order."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from .crops import EpochSampler, MultiCropDataset

__all__ = ["MultiCropData"]


class MultiCropData(L.LightningDataModule):
    """Batches of multi-crops; the sampler shards by rank itself (Lightning's is turned off)."""

    def __init__(self, data: MultiCropDataset, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        self.data, self.batch_size, self.num_workers, self.seed = data, batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        assert self.trainer is not None  # Lightning attaches it before it asks for the loader
        sampler = EpochSampler(
            self.data,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        return DataLoader(
            self.data,
            self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
