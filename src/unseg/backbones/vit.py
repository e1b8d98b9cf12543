"""DINO / DINOv2 Vision Transformers (timm), any input size, with CLS-attention saliency.

timm's VisionTransformer uses DINO's own state-dict keys (SPEC §1), so a backbone's
``weight_state_dict`` is exactly a DINO backbone ``.pth``.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from .base import Backbone, normalise_saliency


class ViTBackbone(Backbone):
    """Last-block patch tokens after the final norm, as (B, D, H/p, W/p).

    Position embeddings are bicubically resampled to the input's grid (timm's
    ``dynamic_img_size``), so any size divisible by the patch size works.
    """

    def __init__(self, timm_name: str, pretrained: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0,
                                       dynamic_img_size=True, drop_path_rate=drop_path_rate)
        self.embed_dim = self.model.embed_dim
        self.stride = self.model.patch_embed.patch_size[0]

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        b, _, height, width = x.shape
        h, w = height // self.stride, width // self.stride
        tokens = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for block in m.blocks[:-1]:
            tokens = block(tokens)
        saliency = cls_attention(m.blocks[-1], tokens, m.num_prefix_tokens)
        tokens = m.norm(m.blocks[-1](tokens))
        patches = tokens[:, m.num_prefix_tokens:].transpose(1, 2).reshape(b, -1, h, w)
        return patches, normalise_saliency(saliency.reshape(b, h, w))


def cls_attention(block: nn.Module, tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """CLS -> patch attention of ``block`` on its input ``tokens``, averaged over heads: (B, N_patches)."""
    attn = block.attn
    b, n, _ = tokens.shape
    qkv = attn.qkv(block.norm1(tokens)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    scores = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # (B, heads, 1, N)
    return scores.softmax(dim=-1)[:, :, 0, num_prefix_tokens:].mean(dim=1)
