"""Fixtures shared by the test modules (no test module imports another).

Builders that tests call with their own arguments (image folders, feature caches, configs)
are fixtures returning the builder. Method configs go through the config loader
(:func:`unseg.config.config_from_dict`), so a misspelt key in a test fails instead of
leaving the default in place.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: no test reaches the network

import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from unseg.backbones import Backbone, create_backbone
from unseg.backbones.base import BACKBONES, BackboneSpec
from unseg.backbones.vit import ViTBackbone
from unseg.config import config_from_dict
from unseg.features.cache import FeatureCache, mark_complete, prepare_cache_dir, write_shard

if TYPE_CHECKING:  # the methods import Lightning: only the tests that use them pay for it
    from unseg.methods.leopart import LeopartConfig
    from unseg.methods.stego import StegoConfig


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``; a group (dict) given in both is merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- images and backbones -------------------------------------------------------------------------


def _image_folder(root: Path, n: int, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """``n`` random RGB PNGs named img00.png ... (W, H) = size."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder() -> Callable[..., Path]:
    """``image_folder(root, n, size=(W, H), seed=0)``: a folder of ``n`` random RGB PNGs img00.png ..."""
    return _image_folder


def _tiny_vit(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return create_backbone("dino_vits16", weights="random")


@pytest.fixture(scope="session")
def tiny_vit() -> Callable[..., Backbone]:
    """``tiny_vit(seed=0)``: a randomly initialised ViT-S/16, fast to build and run."""
    return _tiny_vit


# --- feature caches -------------------------------------------------------------------------------


def _feature_cache(root: Path, feats: np.ndarray, shard_size: int | None = None) -> FeatureCache:
    n, d, h, w = feats.shape
    size = shard_size or max(n, 1)
    num_shards = -(-n // size)
    prepare_cache_dir(
        root, {"num_shards": num_shards, "dim": d, "grid": [h, w], "num_images": n, "input_size": [h * 8, w * 8]}
    )
    for s in range(num_shards):
        block = feats[s * size : (s + 1) * size].astype(np.float32)
        write_shard(
            root,
            s,
            block,
            np.full((len(block), h, w), 1 / (h * w), np.float32),
            [f"img{i:03d}" for i in range(s * size, s * size + len(block))],
            [],
        )
    assert mark_complete(root, num_shards)
    return FeatureCache(root)


@pytest.fixture(scope="session")
def feature_cache() -> Callable[[Path, np.ndarray], FeatureCache]:
    """``feature_cache(root, feats, shard_size=None)``: a complete cache holding ``feats`` (N, D, h, w) in
    shards of ``shard_size`` images (default one shard), uniform saliency."""
    return _feature_cache


# --- method configs -------------------------------------------------------------------------------

SMALL_STEGO = {
    "n_classes": 2,
    "dim": 8,
    "dropout": 0.0,
    "num_neighbors": 3,
    "batch_size": 4,
    "num_workers": 0,
    "accelerator": "cpu",
    "progress_bar": False,
    "max_steps": 3,
    "checkpoint_every": 3,
    "log_every": 1,
    "loss": {"feature_samples": 5, "neg_samples": 2},
}


@pytest.fixture(scope="session")
def stego_config() -> Callable[..., StegoConfig]:
    """``stego_config(**overrides)``: a small CPU STEGO config (3 steps, 8-d codes, 2 classes); a group such
    as ``loss={...}`` is merged into the small one."""
    from unseg.methods.stego import StegoConfig

    return lambda **overrides: config_from_dict(StegoConfig, _merged(SMALL_STEGO, overrides), "test config")


TINY_LEOPART = "leopart_test_vit"  # timm's test_vit: 64-d, 6 blocks, 2 heads, patch 16


@pytest.fixture(scope="module")
def tiny_leopart() -> Iterator[SimpleNamespace]:
    """A tiny registered ViT while the requesting module runs (other modules never see it), on one thread: for
    tiny tensors, OpenMP barriers cost ~10 ms per op on a busy machine.

    Gives ``backbone`` (the tiny ViT's registry name), ``images(root, n=4)`` (64x48 random images) and
    ``config(root, **overrides)``: 4 images of 64x48, batch 2, i.e. 2 steps per epoch; 48 px global crops
    (3x3 tokens), 32 px local (2x2); a group such as ``crops={...}`` is merged into the tiny one.
    """
    from unseg.methods.leopart import LeopartConfig

    base = {
        "dataset": "folder",
        "backbone": TINY_LEOPART,
        "weights": "random",
        "hidden_dim": 32,
        "dim": 16,
        "num_prototypes": 10,
        "crops": {"global_size": 48, "local_size": 32},
        "queue_length": 20,
        "epochs": 2,
        "batch_size": 2,
        "num_workers": 0,
        "accelerator": "cpu",
        "log_every": 1,
        "checkpoint_every_epochs": 1,
        "progress_bar": False,
    }

    def config(root: Path, **overrides: Any) -> LeopartConfig:
        return config_from_dict(LeopartConfig, _merged({**base, "root": str(root)}, overrides), "test config")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(
            BACKBONES._entries,
            TINY_LEOPART,
            BackboneSpec(TINY_LEOPART, 64, 16, "random only (tests)", partial(ViTBackbone, "test_vit")),
        )
        yield SimpleNamespace(
            backbone=TINY_LEOPART, config=config, images=lambda root, n=4: _image_folder(root, n, size=(64, 48))
        )
    torch.set_num_threads(threads)


# --- file systems that refuse: full, read-only, unreadable -------------------------------------------


def _mount_tmpfs(where: Path, options: str) -> bool:
    """Mount a tmpfs at ``where`` (root only); False when this machine does not allow it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode
        == 0
    )


@pytest.fixture(scope="session")
def mount_tmpfs() -> Callable[[Path, str], bool]:
    """``mount_tmpfs(where, options)``: mount a tmpfs there (e.g. ``"ro,size=64k"``); False where not allowed.
    The caller unmounts it (``umount``)."""
    return _mount_tmpfs


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[..., Path]]:
    """``small_disk(name, size="64k", read_only=False)``: a folder on a tmpfs of that size (a full disk is a real
    ENOSPC, a read-only one a real EROFS, for every writer); the test is skipped where tmpfs cannot be mounted."""
    mounted: list[Path] = []

    def make(name: str = "disk", size: str = "64k", read_only: bool = False) -> Path:
        where = tmp_path / name
        if not _mount_tmpfs(where, f"size={size}" + (",ro" if read_only else "")):
            pytest.skip("a small tmpfs cannot be mounted here (needs root)")
        mounted.append(where)
        return where

    yield make
    for where in mounted:  # lazily: a memory map of a failed test's cache may still hold it
        subprocess.run(["umount", "--lazy", str(where)], check=True)


@contextmanager
def _as_nobody(active: bool = True) -> Iterator[None]:
    """Run as the user ``nobody`` when root: root reads and writes any file whatever its mode."""
    if not active or os.geteuid() != 0:
        yield
        return
    nobody = pwd.getpwnam("nobody")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture(scope="session")
def as_nobody() -> Callable[..., Any]:
    """``with as_nobody():`` the block runs as ``nobody`` when the tests run as root (so a mode-000 file is
    unreadable); as the user itself otherwise. Paths it uses must be reachable by that user."""
    return _as_nobody


# --- HTML reports ---------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src")]


def _resolved_links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text())
    assert parser.links, f"{page} links nothing"
    for link in parser.links:
        assert "://" not in link and not link.startswith("/"), link  # relative
        assert (page.parent / unquote(link)).is_file(), link
    return parser.links


@pytest.fixture(scope="session")
def resolved_links() -> Callable[[Path], list[str]]:
    """``resolved_links(page)``: the page's href/src links, after asserting each is relative and names a file."""
    return _resolved_links
