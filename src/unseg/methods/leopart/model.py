"""Leopart's network and loss (``unseg docs methods``): backbone, projection head, prototypes;
RoI-aligned cross-entropy.

The same :class:`LeopartNet` is the student and (as its EMA) the teacher. Its state dict
in a checkpoint is Leopart's: the backbone's own keys, ``projection_head.{0,2,4}.*`` and
``prototypes.weight`` (the renaming lives in :mod:`unseg.methods.leopart.checkpoint`).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from ...backbones import Backbone

__all__ = ["LeopartNet", "NetOutput", "leopart_loss", "cosine_schedule", "freeze_unused", "param_groups"]

NetOutput = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]


class LeopartNet(nn.Module):
    """Dense embeddings and prototype scores of every token of every crop.

    Head: Linear(D, hidden)-GELU-Linear(hidden, hidden)-GELU-Linear(hidden, dim), output
    L2-normalised; prototypes Linear(dim, K, no bias), L2-normalised before each step by
    :meth:`normalise_prototypes`, so scores are cosine similarities.
    """

    def __init__(self, backbone: Backbone, hidden_dim: int = 2048, dim: int = 256, num_prototypes: int = 300) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = nn.Sequential(
            nn.Linear(backbone.embed_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, dim),
        )
        self.prototypes = nn.Linear(dim, num_prototypes, bias=False)
        for layer in [*self.projection_head, self.prototypes]:  # the authors' (DINO's) initialisation
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        """L2-normalise each prototype in place (before each step: scores stay cosine similarities)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, h, w) features -> embeddings (B, h, w, dim) and scores (B, K, h, w)."""
        embeddings = F.normalize(self.projection_head(features.permute(0, 2, 3, 1)), dim=-1)
        return embeddings, self.prototypes(embeddings).permute(0, 3, 1, 2)

    def forward(self, crops: list[torch.Tensor], saliency: bool = False) -> NetOutput:
        """Per crop: embeddings, scores and (if asked) saliency (B, h, w); same-size crops share one pass."""
        embeddings: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        saliencies: list[torch.Tensor] = []
        for _, same_size in itertools.groupby(crops, key=lambda c: c.shape[-2:]):
            group = list(same_size)
            features, sal = self.backbone.forward_with_saliency(torch.cat(group))
            emb, score = self.head(features)
            embeddings += emb.chunk(len(group))
            scores += score.chunk(len(group))
            saliencies += sal.chunk(len(group))
        return embeddings, scores, saliencies if saliency else None


def leopart_loss(
    targets: dict[int, torch.Tensor],
    predictions: list[torch.Tensor],
    boxes_global: torch.Tensor,
    boxes_crop: torch.Tensor,
    masks: dict[int, torch.Tensor] | None,
    stride: int,
    roi_size: int = 7,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Cross-entropy between RoI-aligned targets and predictions over every crop pair.

    ``targets[c]``: (B, K, h, w) Sinkhorn assignments of global crop c; ``predictions[v]``:
    (B, K, h_v, w_v) student scores of crop v; ``boxes_global`` / ``boxes_crop``: (B, G, V, 4)
    c∩v in c's / v's pixel frame; ``masks[c]``: (B, 1, h, w) 0/1 cells the loss counts, or None
    for all. For every c and v != c both sides are RoI-aligned to the same ``roi_size``² cells
    of c∩v (a masked cell counts if its aligned mask is 1); the loss is averaged over cells,
    over the other crops and over the assignment crops.
    """
    batch, views = boxes_global.shape[0], len(predictions)
    total = predictions[0].new_zeros((), dtype=torch.float32)
    for c, q in targets.items():
        boxes = list(boxes_global[:, c])
        aligned_q = roi_align(q, boxes, roi_size, 1 / stride, aligned=True).unflatten(0, (batch, views))
        cells = None
        if masks is not None:
            aligned_mask = roi_align(masks[c], boxes, roi_size, 1 / stride, aligned=True).unflatten(0, (batch, views))
            cells = (aligned_mask[:, :, 0] >= 1 - 1e-6).float()  # ">= 1" up to float rounding: wholly foreground
        crop_loss = total.new_zeros(())
        for v in range(views):
            if v == c:
                continue
            p = roi_align(predictions[v], list(boxes_crop[:, c, v, None]), roi_size, 1 / stride, aligned=True)
            ce = -(aligned_q[:, v] * F.log_softmax(p.float() / temperature, dim=1)).sum(dim=1)  # (B, r, r)
            if cells is None:
                crop_loss = crop_loss + ce.mean()
            else:  # no foreground cell: contributes 0 (the authors skip it) yet keeps the graph for DDP
                crop_loss = crop_loss + (ce * cells[:, v]).sum() / cells[:, v].sum().clamp_min(1)
        total = total + crop_loss / (views - 1)
    return total / len(targets)


def cosine_schedule(start: float, end: float, step: int, total: int) -> float:
    """``start`` at step 0, ``end`` at step ``total`` (and after), half-cosine between (DINO's schedule)."""
    progress = min(step, total) / total
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def freeze_unused(backbone: Backbone) -> list[str]:
    """Stop training parameters that dense features never use (e.g. EfficientNet's classifier stem).

    DDP requires every trained parameter to get a gradient; one backward pass of a tiny
    input in eval mode (no batch-norm statistics change) finds the others. Returns their names.
    """
    was_training = backbone.training
    backbone.eval()
    size = 2 * backbone.stride
    with torch.enable_grad():
        features, saliency = backbone.forward_with_saliency(torch.zeros(1, 3, size, size))
        named = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(features.sum() + saliency.sum(), [p for _, p in named], allow_unused=True)
    backbone.train(was_training)
    unused = [n for (n, p), g in zip(named, grads, strict=True) if g is None]
    for name, param in named:
        if name in unused:
            param.requires_grad_(False)
    return unused


def param_groups(net: LeopartNet, lr_backbone: float, lr_head: float, weight_decay: float) -> list[dict]:
    """AdamW groups: backbone and head (projection head + prototypes), each with and without decay.

    Biases and 1-d parameters (norms) get no weight decay; groups marked ``decay`` follow the
    weight-decay schedule.
    """
    order = [(False, True), (False, False), (True, True), (True, False)]  # (head, decay), the authors' order
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {key: [] for key in order}
    for name, param in net.named_parameters():
        if param.requires_grad:
            head = name.startswith(("projection_head.", "prototypes."))
            buckets[head, not (name.endswith(".bias") or param.ndim == 1)].append(param)
    return [
        {
            "params": params,
            "lr": lr_head if head else lr_backbone,
            "weight_decay": weight_decay if decay else 0.0,
            "decay": decay,
            "name": f"{'head' if head else 'backbone'}{'' if decay else '_no_decay'}",
        }
        for (head, decay), params in buckets.items()
        if params
    ]
