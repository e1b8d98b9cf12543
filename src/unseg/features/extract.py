"""Dense feature extraction into a :class:`FeatureCache`, once per (weights, image files, split, size).

The cache folder's name hashes everything the features depend on, the image files' identity
included, and nothing they do not (shard size, storage dtype): a cache made by
``unseg extract --shard-size 64 --dtype float16`` is the one every evaluation then finds.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..backbones import Backbone
from ..datasets.base import SegmentationDataset
from ..defaults import BATCH_SIZE, NUM_WORKERS
from ..errors import CacheError, ImageError, SettingError
from ..io import require_writable
from ..kinds import check_device
from .cache import (
    CONTENT_IDENTITY,
    STORAGE_KEYS,
    FeatureCache,
    file_identity,
    files_digest,
    mark_complete,
    prepare_cache_dir,
    read_shard_info,
    shard_done,
    write_shard,
)
from .transforms import DEFAULT_INPUT_SIZE, as_size, image_to_tensor

log = logging.getLogger(__name__)
# 2: EfficientNet-Lite runs the TensorFlow-padded network its weights belong to;
# 3: the image files' identity is part of the key, shard size and dtype are not;
# 4: that identity includes the inode and its change time (or the bytes' hash, ``hash_images``)
CACHE_VERSION = 4
# forward-pass precisions: fp32 (the default, and the only one the cache key leaves out, so the caches
# made before there was a choice still answer) or autocast to bfloat16 / float16
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_cache_root() -> Path:
    return Path(os.environ.get("UNSEG_CACHE", Path.home() / ".cache" / "unseg")) / "features"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device of ``device`` ("auto": CUDA when there is one); a SettingError for a name torch does
    not know or a device this machine lacks (:func:`unseg.kinds.check_device`)."""
    return check_device(device)


def weights_fingerprint(backbone: Backbone) -> str:
    """Hash of the backbone's weights: the cache follows the weights, not a file name."""
    digest = hashlib.sha1()
    for key, tensor in backbone.weight_state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def images_digest(dataset: SegmentationDataset, hash_images: bool = False) -> str:
    """Identity of the dataset's image files: id, path relative to the root and :func:`file_identity` of
    each (size, modification and inode change times, inode; or size and a hash of the bytes with
    ``hash_images``). A repaired, replaced, added or removed image changes it (and so the cache)."""

    def relative(path: Path) -> str:
        try:
            return str(Path(path).relative_to(dataset.root))
        except ValueError:
            return str(path)

    return files_digest([s.id, relative(s.image), *file_identity(s.image, hash_images)[1:]] for s in dataset.samples)


def cache_meta(
    backbone: Backbone,
    dataset: SegmentationDataset,
    size: tuple[int, int],
    shard_size: int,
    dtype: str,
    precision: str = "fp32",
    hash_images: bool = False,
) -> dict[str, Any]:
    grid = (size[0] // backbone.stride, size[1] // backbone.stride)
    meta = {
        "version": CACHE_VERSION,
        "backbone": backbone.cache_name,
        "weights": weights_fingerprint(backbone),
        "dataset": dataset.name,
        "root": str(dataset.root.resolve()),
        "split": dataset.split,
        "num_images": len(dataset),
        "images": images_digest(dataset, hash_images),
        "input_size": list(size),
        "dim": backbone.embed_dim,
        "grid": list(grid),
        "stride": backbone.stride,
        "shard_size": shard_size,
        "num_shards": math.ceil(len(dataset) / shard_size),
        "dtype": dtype,
    }
    if hash_images:  # saved label maps are then matched to their images by the same rule
        meta["image_identity"] = CONTENT_IDENTITY
    return meta if precision == "fp32" else {**meta, "precision": precision}


def cache_dir_for(meta: dict[str, Any], cache_root: str | Path) -> Path:
    """``cache_root/<dataset>-<split>-<backbone>-<HxW>-<hash of the contents' settings>``."""
    contents = sorted((k, v) for k, v in meta.items() if k not in STORAGE_KEYS)
    key = hashlib.sha1(repr(contents).encode()).hexdigest()[:12]
    h, w = meta["input_size"]
    return Path(cache_root) / f"{meta['dataset']}-{meta['split']}-{meta['backbone']}-{h}x{w}-{key}"


class _Images(Dataset):
    """Dataset indices -> normalised tensors; corrupt images raise, or become None when skipping."""

    def __init__(
        self,
        dataset: SegmentationDataset,
        indices: Sequence[int],
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        skip_corrupt: bool,
    ) -> None:
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


def _as_is(item: Any) -> Any:
    """The loader hands single images over untouched; the main process batches them per shard."""
    return item


def _yield_to_forward(_: int) -> None:
    """Loader workers at the lowest priority: beside a CPU forward they decode on the cycles it
    leaves idle, instead of stalling one of its threads (and so its whole parallel region)."""
    if hasattr(os, "nice"):
        os.nice(19)


def _loader(images: _Images, batch_size: int, num_workers: int, cpu_forward: bool) -> Iterator[Any]:
    """Decoded images one by one, in order, about two batches ahead of the forward.

    Workers decode single images, so the first batch is ready after 1/num_workers of its decoding.
    """
    if num_workers == 0 or len(images) == 0:  # no worker processes to start for nothing
        return iter(DataLoader(images, batch_size=None, collate_fn=_as_is))
    return iter(
        DataLoader(
            images,
            batch_size=None,
            collate_fn=_as_is,
            num_workers=num_workers,
            prefetch_factor=max(2, math.ceil(2 * batch_size / num_workers)),
            worker_init_fn=_yield_to_forward if cpu_forward else None,
        )
    )


class _Shard:
    """One shard's rows, filled batch by batch in place (no per-batch list to concatenate)."""

    def __init__(self, index: int, rows: int, dim: int, grid: Sequence[int], dtype: str) -> None:
        self.index = index
        self.feats = np.empty((rows, dim, *grid), dtype)
        self.sal = np.empty((rows, *grid), np.float32)
        self.ids: list[str] = []
        self.skipped: list[str] = []

    def add(self, ids: list[str], feats: torch.Tensor, sal: torch.Tensor) -> None:
        start = len(self.ids)
        self.feats[start : start + len(ids)] = feats.numpy()  # casts to the storage dtype as astype does
        self.sal[start : start + len(ids)] = sal.numpy()
        self.ids += ids

    def write(self, root: Path) -> None:
        n = len(self.ids)  # fewer rows than allocated when images were skipped
        write_shard(root, self.index, self.feats[:n], self.sal[:n], self.ids, self.skipped)


class _HostCopy:
    """A batch's outputs on their way to host memory; on CUDA the copy runs while the next batch computes."""

    def __init__(self, ids: list[str], feats: torch.Tensor, sal: torch.Tensor, dtype: str) -> None:
        self.ids, self.event = ids, None
        if feats.device.type == "cuda":
            feats = feats.to(getattr(torch, dtype))  # float16 storage: half the bytes to copy
            self.feats = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True).copy_(feats, non_blocking=True)
            self.sal = torch.empty(sal.shape, dtype=torch.float32, pin_memory=True).copy_(sal, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:  # numpy has no bfloat16; a float32 output stays as it is (no copy)
            self.feats, self.sal = feats.to(torch.float32), sal.to(torch.float32)

    def into(self, shard: _Shard) -> None:
        if self.event is not None:
            self.event.synchronize()
        shard.add(self.ids, self.feats, self.sal)


class _ShardWriter:
    """Writes finished shards in one background thread while the next shard is computed;
    at most one shard waits in memory for its write."""

    def __init__(self, root: Path) -> None:
        self.root, self.pool = root, ThreadPoolExecutor(1, thread_name_prefix="unseg-shards")
        self.pending: Future | None = None

    def submit(self, shard: _Shard) -> None:
        self.wait()
        self.pending = self.pool.submit(shard.write, self.root)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown()


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def distributed_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): those given, else torchrun's ``RANK`` / ``WORLD_SIZE``, else (0, 1); a
    SettingError unless 0 <= rank < world_size (a rank outside the world would write shards no one reads)."""

    def from_env(name: str, default: int) -> int:
        text = os.environ.get(name, str(default))
        try:
            return int(text)
        except ValueError:
            raise SettingError(f"environment variable {name}={text!r} is not a whole number") from None

    rank = from_env("RANK", 0) if rank is None else rank
    world_size = from_env("WORLD_SIZE", 1) if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise SettingError(
            f"rank {rank} of world size {world_size} is not allowed: the world size must be at least "
            f"1 and the rank in 0..world size - 1 (--rank, --world-size; $RANK, $WORLD_SIZE)"
        )
    return rank, world_size


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    dataset: SegmentationDataset,
    input_size: int | Sequence[int] = DEFAULT_INPUT_SIZE,
    cache_root: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    device: str = "auto",
    num_workers: int = NUM_WORKERS,
    shard_size: int = 256,
    dtype: str = "float32",
    rank: int | None = None,
    world_size: int | None = None,
    skip_corrupt: bool = False,
    progress: bool = True,
    precision: str = "fp32",
    hash_images: bool = False,
) -> FeatureCache | None:
    """Extract (or reuse) dense features of ``dataset`` and return the complete cache.

    Resumes a partial cache shard by shard (with that cache's own ``shard_size`` and ``dtype``);
    a complete one is only read, so a read-only cache serves. With ``world_size > 1`` (torchrun
    sets it) this rank writes shards ``rank, rank + world_size, ...``; it returns the cache if it
    was the last to finish, else None (read it once every rank is done). A cache that left out
    unreadable images answers only for ``skip_corrupt`` runs.

    ``precision`` bf16 / fp16 runs the forward under autocast (fp16 on CUDA only); the cache
    records it, so it never answers for another precision. ``hash_images`` identifies the image
    files by a hash of their bytes instead of their size, times and inode (``unseg docs reliability``), for
    file systems that do not keep those reliably. Decoding runs in ``num_workers``
    processes (at the lowest priority beside a CPU forward) and shards are written in the
    background, so the forward sets the pace (`unseg docs benchmarks`).
    """
    size = as_size(input_size, "input size")
    stride = backbone.stride
    if size[0] % stride or size[1] % stride:
        shown = size[0] if size[0] == size[1] else f"{size[0]}x{size[1]}"
        raise SettingError(
            f"input size {shown} is not a positive multiple of the backbone stride {stride} "
            f"(e.g. {max(1, round(max(size) / stride)) * stride})"
        )
    if dtype not in ("float32", "float16"):
        raise SettingError(f"dtype {dtype!r} is not one of float32, float16")
    if precision not in PRECISIONS:
        raise SettingError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if value < 1:
            raise SettingError(f"{name} {value} is not allowed; it must be at least 1")
    rank, world_size = distributed_rank(rank, world_size)
    dev = resolve_device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise SettingError(f"precision fp16 needs a CUDA device, not {dev}; use bf16 or fp32 there")
    meta = cache_meta(backbone, dataset, size, shard_size, dtype, precision, hash_images)
    root = cache_dir_for(meta, cache_root or default_cache_root())
    if (root / "COMPLETE").exists():
        cache = FeatureCache(root)
        _check_skipped(cache.skipped, dataset, root, skip_corrupt)
        return cache
    require_writable(root, "feature cache folder (--cache-dir, $UNSEG_CACHE)")
    meta = prepare_cache_dir(root, meta)
    shard_size, dtype = meta["shard_size"], meta["dtype"]
    if not skip_corrupt:
        _check_skipped(
            [i for s in range(meta["num_shards"]) if shard_done(root, s) for i in read_shard_info(root, s).skipped],
            dataset,
            root,
            skip_corrupt,
        )
    if dev.type == "cuda" and world_size > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    backbone = backbone.to(dev).eval()
    todo = [s for s in range(meta["num_shards"]) if s % world_size == rank and not shard_done(root, s)]
    bar = _progress(
        sum(min(shard_size, len(dataset) - s * shard_size) for s in todo),
        progress,
        f"features {dataset.name}/{dataset.split}",
    )
    rows = {s: min(shard_size, len(dataset) - s * shard_size) for s in todo}
    indices = [i for s in todo for i in range(s * shard_size, s * shard_size + rows[s])]
    items = _loader(
        _Images(dataset, indices, size, backbone.mean, backbone.std, skip_corrupt),
        batch_size,
        num_workers,
        dev.type == "cpu",
    )
    writer = _ShardWriter(root)
    try:
        for shard_index in todo:
            shard = _Shard(shard_index, rows[shard_index], meta["dim"], meta["grid"], dtype)
            copying: _HostCopy | None = None
            for start in range(0, rows[shard_index], batch_size):
                batch = [next(items) for _ in range(min(batch_size, rows[shard_index] - start))]
                kept = [(i, t) for i, t in batch if t is not None]
                shard.skipped += [i for i, t in batch if t is None]
                if kept:
                    tensors = [t for _, t in kept]
                    if dev.type == "cuda":  # pinned, so the copy to the device does not block
                        out = torch.empty((len(tensors), *tensors[0].shape), pin_memory=True)
                        images = torch.stack(tensors, out=out).to(dev, non_blocking=True)
                    else:
                        images = torch.stack(tensors)
                    with _autocast(dev, precision):
                        feats, sal = backbone.forward_with_saliency(images)
                    if copying is not None:
                        copying.into(shard)
                    copying = _HostCopy([i for i, _ in kept], feats, sal, dtype)
                bar.update(len(batch))
            if copying is not None:
                copying.into(shard)
            writer.submit(shard)
    finally:
        writer.close()
    bar.close()
    return FeatureCache(root) if mark_complete(root, meta["num_shards"]) else None


def _check_skipped(skipped: list[str], dataset: SegmentationDataset, root: Path, skip_corrupt: bool) -> None:
    """A cache that left images out answers only for runs that allow it (``skip_corrupt``)."""
    if skipped and not skip_corrupt:
        paths = {s.id: s.image for s in dataset.samples}
        names = ", ".join(str(paths.get(i, i)) for i in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        raise ImageError(
            f"feature cache {root} left out {len(skipped)} unreadable image(s) ({names}); repair "
            "them (a changed image file gets a new cache) or pass --skip-corrupt to use it without them"
        )


def require_complete(cache: FeatureCache | None, dataset: SegmentationDataset) -> FeatureCache:
    """The cache :func:`extract_features` returned, or a CacheError while other ranks still write shards of it."""
    if cache is None:
        raise CacheError(
            f"other ranks are still extracting {dataset.name}/{dataset.split}; run this again once they are done"
        )
    return cache


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled or total == 0, desc=desc, unit="img")
