"""Dense feature extraction into a :class:`FeatureCache`, once per (weights, dataset, split, size)."""
from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..backbones import Backbone
from ..datasets.base import SegmentationDataset
from ..errors import CacheError, ImageError
from .cache import FeatureCache, mark_complete, prepare_cache_dir, shard_done, write_shard
from .transforms import as_size, image_to_tensor

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: EfficientNet-Lite runs the TensorFlow-padded network its weights belong to


def default_cache_root() -> Path:
    return Path(os.environ.get("UNSEG_CACHE", Path.home() / ".cache" / "unseg")) / "features"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def weights_fingerprint(backbone: Backbone) -> str:
    """Hash of the backbone's weights: the cache follows the weights, not a file name."""
    digest = hashlib.sha1()
    for key, tensor in backbone.weight_state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_meta(backbone: Backbone, dataset: SegmentationDataset, size: tuple[int, int],
               shard_size: int, dtype: str) -> dict[str, Any]:
    grid = (size[0] // backbone.stride, size[1] // backbone.stride)
    return {
        "version": CACHE_VERSION, "backbone": type(backbone).__name__, "weights": weights_fingerprint(backbone),
        "dataset": dataset.name, "root": str(dataset.root.resolve()), "split": dataset.split,
        "num_images": len(dataset), "input_size": list(size), "dim": backbone.embed_dim, "grid": list(grid),
        "stride": backbone.stride, "shard_size": shard_size, "num_shards": math.ceil(len(dataset) / shard_size),
        "dtype": dtype,
    }


def cache_dir_for(meta: dict[str, Any], cache_root: str | Path) -> Path:
    key = hashlib.sha1(repr(sorted(meta.items())).encode()).hexdigest()[:12]
    h, w = meta["input_size"]
    return Path(cache_root) / f"{meta['dataset']}-{meta['split']}-{meta['backbone']}-{h}x{w}-{key}"


class _Images(Dataset):
    """Dataset indices -> normalised tensors; corrupt images raise, or become None when skipping."""

    def __init__(self, dataset: SegmentationDataset, indices: Sequence[int], size: tuple[int, int],
                 mean: Sequence[float], std: Sequence[float], skip_corrupt: bool) -> None:
        self.dataset, self.indices, self.size = dataset, list(indices), size
        self.mean, self.std, self.skip_corrupt = mean, std, skip_corrupt

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None]:
        sample = self.dataset.samples[self.indices[i]]
        try:
            image = self.dataset.load_image(sample)
        except ImageError as exc:
            if not self.skip_corrupt:
                raise
            log.warning("skipping %s", exc)
            return sample.id, None
        return sample.id, image_to_tensor(image, self.size, self.mean, self.std)


def _collate(batch: list[tuple[str, torch.Tensor | None]]) -> tuple[list[str], torch.Tensor | None, list[str]]:
    kept = [(i, t) for i, t in batch if t is not None]
    skipped = [i for i, t in batch if t is None]
    return [i for i, _ in kept], (torch.stack([t for _, t in kept]) if kept else None), skipped


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@torch.no_grad()
def extract_features(backbone: Backbone, dataset: SegmentationDataset, input_size: int | Sequence[int] = 448,
                     cache_root: str | Path | None = None, batch_size: int = 16, device: str = "auto",
                     num_workers: int = 2, shard_size: int = 256, dtype: str = "float32",
                     rank: int | None = None, world_size: int | None = None,
                     skip_corrupt: bool = False, progress: bool = True) -> FeatureCache | None:
    """Extract (or reuse) dense features of ``dataset`` and return the complete cache.

    Resumes a partial cache shard by shard. With ``world_size > 1`` (torchrun sets it) this
    rank writes shards ``rank, rank + world_size, ...``; it returns the cache if it was the
    last to finish, else None (read it once every rank is done).
    """
    size = as_size(input_size)
    if size[0] % backbone.stride or size[1] % backbone.stride:
        raise ValueError(f"input size {size} is not a multiple of the backbone stride {backbone.stride}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype {dtype!r} is not one of float32, float16")
    env_rank, env_world = distributed_rank()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    meta = cache_meta(backbone, dataset, size, shard_size, dtype)
    root = cache_dir_for(meta, cache_root or default_cache_root())
    if (root / "COMPLETE").exists():
        return FeatureCache(root)
    prepare_cache_dir(root, meta)
    dev = resolve_device(device)
    if dev.type == "cuda" and world_size > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    backbone = backbone.to(dev).eval()
    todo = [s for s in range(meta["num_shards"]) if s % world_size == rank and not shard_done(root, s)]
    bar = _progress(sum(min(shard_size, len(dataset) - s * shard_size) for s in todo), progress,
                    f"features {dataset.name}/{dataset.split}")
    for shard in todo:
        indices = range(shard * shard_size, min((shard + 1) * shard_size, len(dataset)))
        loader = DataLoader(_Images(dataset, indices, size, backbone.mean, backbone.std, skip_corrupt),
                            batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
        ids: list[str] = []
        skipped: list[str] = []
        feats, sals = [], []
        for batch_ids, images, batch_skipped in loader:
            skipped += batch_skipped
            if images is not None:
                f, s = backbone.forward_with_saliency(images.to(dev, non_blocking=True))
                feats.append(f.to("cpu", torch.float32).numpy().astype(dtype, copy=False))
                sals.append(s.to("cpu", torch.float32).numpy())
                ids += batch_ids
            bar.update(len(batch_ids) + len(batch_skipped))
        grid = meta["grid"]
        empty_f = np.zeros((0, meta["dim"], *grid), dtype)
        write_shard(root, shard, np.concatenate(feats) if feats else empty_f,
                    np.concatenate(sals) if sals else np.zeros((0, *grid), np.float32), ids, skipped)
    bar.close()
    return FeatureCache(root) if mark_complete(root, meta["num_shards"]) else None


def require_complete(cache: FeatureCache | None, dataset: SegmentationDataset) -> FeatureCache:
    """The cache :func:`extract_features` returned, or a CacheError while other ranks still write shards of it."""
    if cache is None:
        raise CacheError(f"other ranks are still extracting {dataset.name}/{dataset.split}; "
                         "run this again once they are done")
    return cache


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled or total == 0, desc=desc, unit="img")
