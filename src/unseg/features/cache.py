"""On-disk, memory-mapped, sharded store of dense features: written once, read by every evaluation.

Layout of one cache folder::

    meta.json                 what was extracted: backbone fingerprint, dataset, split, size and
                              the identity of every image file (path, size, modification and inode
                              change times, inode; or a hash of its bytes)
    shard-00000.feats.npy     (n, D, h, w) features of dataset indices [0, shard_size)
    shard-00000.sal.npy       (n, h, w) saliency maps
    shard-00000.json          ids of those n images (+ skipped ones); written last = shard done
    ...
    COMPLETE                  every shard done
    masks-HxW.npy (+ .json)   label maps at HxW, with the identity of the mask files they came from

Every file is written to a temporary name and renamed, so a killed extraction leaves
only whole shards; it resumes from the first missing one. Ranks of a multi-GPU run
write disjoint shards (shard i belongs to rank i % world_size).

A cache answers only for the files it was built from (``unseg docs reliability``): the image files'
identity is part of its folder name, so changed images get a new cache, and saved masks are
reused only while their files, folder and decoding settings are the same. A damaged cache (a
shard or meta.json cut short, missing or unreadable) is a CacheError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheError
from ..io import save_json, save_npy

log = logging.getLogger(__name__)
# settings of how a cache is stored, not of what it holds: a cache of any of them answers for the others
STORAGE_KEYS = ("shard_size", "num_shards", "dtype")
CONTENT_IDENTITY = "content"  # meta["image_identity"] of caches whose images are identified by their bytes


def damaged(path: Path, problem: object) -> CacheError:
    """A CacheError for a cache file that cannot be read as written: it names the file and the way out."""
    return CacheError(
        f"feature cache file {path} is damaged ({problem}); remove the folder {path.parent} "
        "and run again to extract it anew"
    )


def read_json(path: Path) -> Any:
    """A cache's JSON file, or a CacheError naming it (missing, cut short, not JSON)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    except (OSError, ValueError) as exc:
        raise damaged(path, exc) from None


@dataclass(frozen=True)
class ShardInfo:
    index: int
    ids: list[str]
    skipped: list[str]


class FeatureCache:
    """Read access to a complete cache folder; features are memory-mapped, never loaded whole."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "COMPLETE").exists():
            raise CacheError(
                f"feature cache {self.root} is incomplete (no COMPLETE marker); run the extraction again to resume it"
            )
        self.meta: dict[str, Any] = read_json(self.root / "meta.json")
        if not isinstance(self.meta, dict) or not isinstance(self.meta.get("num_shards"), int):
            raise damaged(self.root / "meta.json", "no shard count")
        self.shards = [read_shard_info(self.root, i) for i in range(self.meta["num_shards"])]
        self.ids = [i for s in self.shards for i in s.ids]
        self.skipped = [i for s in self.shards for i in s.skipped]
        self._feats = [_open_rows(shard_path(self.root, s.index, "feats.npy"), len(s.ids)) for s in self.shards]
        self._sal = [_open_rows(shard_path(self.root, s.index, "sal.npy"), len(s.ids)) for s in self.shards]
        self._offsets = np.cumsum([0] + [len(f) for f in self._feats])

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.meta["grid"])

    def _locate(self, index: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return shard, index - int(self._offsets[shard])

    def features(self, index: int) -> np.ndarray:
        """(D, h, w) float32 features of the index-th cached image."""
        shard, row = self._locate(index)
        return np.array(self._feats[shard][row], dtype=np.float32)

    def saliency(self, index: int) -> np.ndarray:
        shard, row = self._locate(index)
        return np.array(self._sal[shard][row], dtype=np.float32)

    def iter_chunks(self, batch: int = 64) -> Iterator[np.ndarray]:
        """(n, D, h, w) float32 blocks in order, at most ``batch`` images each (bounded memory)."""
        for feats in self._feats:
            for start in range(0, len(feats), batch):
                yield read_rows(feats, start, min(start + batch, len(feats))).astype(np.float32, copy=False)

    def iter_tokens(self, batch: int = 64) -> Iterator[np.ndarray]:
        """(n*h*w, D) token rows in image-major, row-major order."""
        for block in self.iter_chunks(batch):
            yield block.transpose(0, 2, 3, 1).reshape(-1, block.shape[1])

    def saliency_array(self) -> np.ndarray:
        return np.concatenate([np.asarray(s, dtype=np.float32) for s in self._sal])

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r}, n={len(self)}, dim={self.dim}, grid={self.grid})"


def _open_rows(path: Path, rows: int) -> np.ndarray:
    """A shard array, memory-mapped, with the ``rows`` images its id list names; a CacheError naming
    the file when it is missing, cut short or holds another number of rows."""
    try:
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    except (OSError, ValueError, EOFError) as exc:  # a header or data cut short
        raise damaged(path, exc) from None
    if len(array) != rows:
        raise damaged(path, f"{len(array)} rows for {rows} images")
    return array


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a memory-mapped .npy array, read from its file.

    Slicing the map would leave every page read mapped into this process, so streaming a
    cache larger than memory would grow resident memory to the cache's size; a plain
    read keeps it at one block.
    """
    if not isinstance(array, np.memmap) or not array.flags.c_contiguous:
        return np.array(array[start:stop])
    row = array.shape[1:]
    assert array.filename is not None  # the caches' maps are of files
    with open(array.filename, "rb") as fh:
        fh.seek(array.offset + start * array.itemsize * int(np.prod(row)))
        return np.fromfile(fh, dtype=array.dtype, count=(stop - start) * int(np.prod(row))).reshape(stop - start, *row)


def shard_path(root: Path, index: int, suffix: str) -> Path:
    return root / f"shard-{index:05d}.{suffix}"


def read_shard_info(root: Path, index: int) -> ShardInfo:
    path = shard_path(root, index, "json")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"feature cache {root} lacks shard {path.name}; run the extraction again") from None
    except (OSError, ValueError) as exc:
        raise damaged(path, exc) from None
    if not isinstance(info, dict) or not isinstance(info.get("ids"), list) or not isinstance(info.get("skipped"), list):
        raise damaged(path, "no id lists")
    return ShardInfo(index, info["ids"], info["skipped"])


def shard_done(root: Path, index: int) -> bool:
    return shard_path(root, index, "json").exists()


def write_shard(
    root: Path, index: int, feats: np.ndarray, saliency: np.ndarray, ids: list[str], skipped: list[str]
) -> None:
    """Arrays first, the id list last: its presence is what marks the shard complete."""
    for suffix, array in (("feats.npy", feats), ("sal.npy", saliency)):
        save_npy(array, shard_path(root, index, suffix))
    save_json({"ids": ids, "skipped": skipped}, shard_path(root, index, "json"))


def prepare_cache_dir(root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Create ``root`` with ``meta``, or return the meta of the partial cache already there.

    An existing folder must hold the same contents; its storage settings (shard size, dtype)
    are kept, since its finished shards were cut by them.
    """
    meta_path = root / "meta.json"
    if meta_path.exists():
        old = read_json(meta_path)
        if not isinstance(old, dict):
            raise damaged(meta_path, "not a mapping")
        diff = sorted(k for k in set(old) | set(meta) if k not in STORAGE_KEYS and old.get(k) != meta.get(k))
        if diff:
            raise CacheError(
                f"feature cache {root} was made with other settings ({', '.join(diff)}); "
                "remove it or use another --cache-dir"
            )
        if any(old.get(k) != meta.get(k) for k in STORAGE_KEYS):
            log.info(
                "resuming feature cache %s with its own shard size %s and dtype %s",
                root,
                old.get("shard_size"),
                old.get("dtype"),
            )
        return old
    save_json(meta, meta_path)
    return meta


def file_identity(
    path: Path, hash_contents: bool = False
) -> tuple[str, int] | tuple[str, int, int, int, int] | tuple[str, int, str]:
    """What a cached result made from the file at ``path`` answers for.

    (path, size, modification time, inode change time (ns), inode): the change time and the
    inode cannot be set back by a user, so a file rewritten or replaced with the same size and
    modification time is still a new file. With ``hash_contents``: (path, size, SHA-1 of the bytes),
    for file systems whose times or inodes are not kept. (path, -1) when the file is missing.
    """
    try:
        st = os.stat(path)
    except OSError:
        return str(path), -1
    if not hash_contents:
        return str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return str(path), st.st_size, digest.hexdigest()


def files_digest(items: Iterable[Any]) -> str:
    """A short hash of JSON-able items (ids, file identities, settings): what a cached result was made from."""
    digest = hashlib.sha1()
    for item in items:
        digest.update(json.dumps(item).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def mark_complete(root: Path, num_shards: int) -> bool:
    """Write COMPLETE once all shards exist (any rank may be the last to finish)."""
    if all(shard_done(root, i) for i in range(num_shards)):
        save_json({"num_shards": num_shards}, root / "COMPLETE")
        return True
    return False


def masks_digest(cache: FeatureCache, dataset: Any, size: tuple[int, int]) -> str:
    """What label maps at ``size`` are made from: the cached ids, each one's image and mask file
    identity (which includes the masks folder) and the dataset's decoding (class, number of classes)."""
    index = {s.id: s for s in dataset.samples}
    missing = [i for i in cache.ids if i not in index or index[i].mask is None]
    if missing:
        raise CacheError(
            f"dataset {dataset.name}/{dataset.split} has no mask for cached image(s) {', '.join(missing[:5])}"
        )
    head = [type(dataset).__module__, type(dataset).__qualname__, dataset.num_classes, list(size)]
    content = cache.meta.get("image_identity") == CONTENT_IDENTITY
    return files_digest(
        [head]
        + [[i, file_identity(index[i].image, content), file_identity(Path(index[i].mask), content)] for i in cache.ids]
    )


def cached_masks(cache: FeatureCache, dataset: Any, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) uint8 label maps of the cached images, nearest-resized; saved beside the features.

    Saved maps are reused only when :func:`masks_digest` still matches (a fixed mask, another
    masks folder or another number of classes remakes them). A read-only cache is not an
    error: the maps are then made and not saved.
    """
    from .transforms import resize_mask

    path = cache.root / f"masks-{size[0]}x{size[1]}.npy"
    stamp = path.with_suffix(".json")
    digest = masks_digest(cache, dataset, size)

    def stamped() -> bool:
        try:
            return json.loads(stamp.read_text()).get("digest") == digest
        except (OSError, ValueError):
            return False

    if stamped():
        try:
            masks = np.load(path)
        except (OSError, ValueError):
            masks = None
        # the stamp read again: a writer removes it before replacing the maps, so both reads
        # agreeing means the maps loaded are the stamped ones
        if masks is not None and masks.shape == (len(cache), *size) and stamped():
            return masks
    index = {s.id: s for s in dataset.samples}
    masks = np.stack(
        [resize_mask(dataset.load_mask(index[i], dataset.load_image(index[i]).size), size) for i in cache.ids]
    )
    try:
        stamp.unlink(missing_ok=True)
        save_npy(masks, path)
        save_json({"digest": digest}, stamp)  # last: the maps count as saved only once it is there
    except OSError as exc:
        log.info("label maps not saved in the feature cache %s (%s); they are remade next time", cache.root, exc)
    return masks
