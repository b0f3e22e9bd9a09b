"""Model factory: `create_model(arch, backbone)` in the spirit of segmentation_models_pytorch."""
from __future__ import annotations

from torch import nn

from core.models.classifier import LesionClassifier
from core.models.segmentation import CoarseSN, EnhancedSN

ARCHITECTURES = ("coarse_sn", "mask_cn", "enhanced_sn", "classifier")


def create_model(arch: str, backbone: str = "efficientnet_lite0", pretrained: str | None = "package") -> nn.Module:
    """pretrained: "package" (ImageNet weights from the pip package), "hub" (timm hub, needs internet) or None."""
    if arch == "coarse_sn":
        return CoarseSN(backbone, pretrained)
    if arch == "enhanced_sn":
        return EnhancedSN(backbone, pretrained)
    if arch == "mask_cn":
        return LesionClassifier(backbone, in_chans=4, pretrained=pretrained)
    if arch == "classifier":
        return LesionClassifier(backbone, in_chans=3, pretrained=pretrained)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
