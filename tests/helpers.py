"""Small builders shared by the tests: tiny image folders and a fast random backbone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unseg.backbones import create_backbone

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def make_image_folder(root: Path, n: int, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """``n`` random RGB PNGs named img00.png ... (W, H) = size."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    return root


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone("dino_vits16", weights="random")
