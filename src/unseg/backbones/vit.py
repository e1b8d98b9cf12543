"""DINO / DINOv2 Vision Transformers (timm modules), any input size, with CLS-attention saliency.

timm's VisionTransformer uses DINO's own state-dict keys (``unseg docs checkpoints``), so a
backbone's ``weight_state_dict`` is exactly a DINO backbone ``.pth``. The token embedding
is written out here rather than taken from timm, because the position embeddings must be
resampled exactly as the authors' models do it (:func:`resample_pos_embed`); timm's own
resampling moves the features by up to ~5e-2 at sizes other than the training size.
Only timm's public modules are used (``patch_embed.proj``, ``blocks``, ``norm``, ...).
Tested with timm 1.0.31 and torch 2.14.1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import cast

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from .base import Backbone, normalise_saliency


class ViTBackbone(Backbone):
    """Last-block patch tokens after the final norm, as (B, D, H/p, W/p).

    Any input size works (a remainder below the patch size is dropped, as the patch
    convolution does). A checkpoint's position embedding of another square grid (e.g. a
    DINOv2 file made at 224 px) is adopted as it is and resampled per input, like the
    authors' models, instead of being resampled twice.
    """

    model: VisionTransformer

    def __init__(self, timm_name: str, pretrained: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        # timm.create_model is typed nn.Module; a ViT's name builds a VisionTransformer
        self.model = cast(
            VisionTransformer,
            timm.create_model(timm_name, pretrained=pretrained, num_classes=0, drop_path_rate=drop_path_rate),
        )
        self.embed_dim = self.model.embed_dim
        self.stride = self.model.patch_embed.patch_size[0]
        # DINOv2's hub models resample in float32 and cast to the tokens' dtype; DINO's in the embedding's dtype
        self.dinov2 = "dinov2" in timm_name
        self.model.register_load_state_dict_pre_hook(_adopt_pos_embed_grid)

    @property
    def pos_prefix_tokens(self) -> int:
        """Leading position-embedding rows that belong to the class / register tokens (0 if they get none)."""
        return 0 if self.model.no_embed_class else self.model.num_prefix_tokens

    def accepts_pos_embed(self, pos: torch.Tensor) -> bool:
        """Whether ``pos`` is a position embedding of this model on some square grid."""
        return pos_embed_grid(pos, self.embed_dim, self.pos_prefix_tokens) is not None

    def weight_shapes(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
        """A position embedding of another grid is adopted as it is (and resampled per input)."""
        shapes = super().weight_shapes(state)
        pos = state.get("pos_embed")
        if isinstance(pos, torch.Tensor) and self.accepts_pos_embed(pos):
            shapes["pos_embed"] = pos.shape
        return shapes

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, prefix (class, register) tokens and position embedding: (B, prefix + h*w, D)."""
        m = self.model
        assert m.pos_embed is not None  # timm's None is for ViTs without one; DINO's learn it
        height, width = x.shape[-2:]
        patches = m.patch_embed.norm(m.patch_embed.proj(x).flatten(2).transpose(1, 2))
        pos = resample_pos_embed(
            m.pos_embed,
            height // self.stride,
            width // self.stride,
            self.pos_prefix_tokens,
            square_input=height == width,
            float32=self.dinov2,
        )
        if self.dinov2:
            pos = pos.to(patches.dtype)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        if m.no_embed_class:  # prefix tokens get no position embedding
            tokens = torch.cat(prefix + [patches + pos], dim=1)
        else:
            tokens = torch.cat(prefix + [patches], dim=1) + pos
        return m.norm_pre(m.patch_drop(m.pos_drop(tokens)))

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        b, _, height, width = x.shape
        h, w = height // self.stride, width // self.stride
        tokens = self.embed(x)
        for block in m.blocks[:-1]:
            tokens = block(tokens)
        # nn.Sequential types its items nn.Module; a VisionTransformer's blocks are Blocks
        saliency = cls_attention(cast(Block, m.blocks[-1]), tokens, m.num_prefix_tokens)
        tokens = m.norm(m.blocks[-1](tokens))
        patches = tokens[:, m.num_prefix_tokens :].transpose(1, 2).reshape(b, -1, h, w)
        return patches, normalise_saliency(saliency.reshape(b, h, w))


def pos_embed_grid(pos: torch.Tensor, dim: int, prefix: int) -> int | None:
    """Side M of the square patch grid of a (1, prefix + M*M, dim) position embedding, else None."""
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != dim or pos.shape[1] <= prefix:
        return None
    side = math.isqrt(pos.shape[1] - prefix)
    return side if side * side == pos.shape[1] - prefix else None


def resample_pos_embed(
    pos: torch.Tensor, gh: int, gw: int, prefix: int = 1, square_input: bool = True, float32: bool = False
) -> torch.Tensor:
    """Position embedding for a gh x gw patch grid by DINO's rule (DINOv2's hub models: ``float32``).

    Unchanged when the grid has as many cells as the embedding and the input is square;
    otherwise the (M, M) patch embeddings are bicubically interpolated with scale factor
    ((gh + 0.1) / M, (gw + 0.1) / M), no antialias (the 0.1 avoids a floor rounding to
    one cell less); the ``prefix`` rows (class token) are kept as they are.
    """
    n = pos.shape[1] - prefix
    if gh * gw == n and square_input:
        return pos
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"position embedding of {n} patch rows is not a square grid")
    grid = pos[:, prefix:].float() if float32 else pos[:, prefix:]
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic", antialias=False)
    if grid.shape[-2:] != (gh, gw):
        raise ValueError(
            f"bicubic resampling of the {side}x{side} position grid gave {tuple(grid.shape[-2:])}, not {gh}x{gw}"
        )
    return torch.cat([pos[:, :prefix].to(grid.dtype), grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)


def _adopt_pos_embed_grid(module: VisionTransformer, state: dict, prefix: str, *args: object) -> None:
    """Load-state-dict pre-hook: take over a position embedding of another square grid (same width)."""
    incoming = state.get(prefix + "pos_embed")
    own = module.pos_embed
    assert own is not None  # as in ViTBackbone.embed
    if not isinstance(incoming, torch.Tensor) or incoming.shape == own.shape:
        return
    pos_prefix = 0 if module.no_embed_class else module.num_prefix_tokens
    if pos_embed_grid(incoming, own.shape[-1], pos_prefix) is not None:
        module.pos_embed = nn.Parameter(own.new_empty(incoming.shape), requires_grad=own.requires_grad)


def cls_attention(block: Block, tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """CLS -> patch attention of ``block`` on its input ``tokens``, averaged over heads: (B, N_patches)."""
    attn = cast(Attention, block.attn)  # timm types it nn.Module: the Attention a ViT's Block builds
    b, n, _ = tokens.shape
    qkv = attn.qkv(block.norm1(tokens)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    scores = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # (B, heads, 1, N)
    return scores.softmax(dim=-1)[:, :, 0, num_prefix_tokens:].mean(dim=1)
